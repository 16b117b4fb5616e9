"""``cmidd ensemble``: one set built from the top trials of a search or from registered versions."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ._args import add_dataset_ipc, add_set, add_tracking_uri, positive_int, versions

EXAMPLES = """examples:
  cmidd ensemble --from-search RUN_ID --top 3 --mode concat             # IPC grows 3-fold
  cmidd ensemble --dataset digits --ipc 10 --versions 1,2,3 --mode per-class-best --set eval.epochs=100
"""
MODES = ["concat", "per-class-best"]  # = cmidd.ensemble.SET_MODES; repeated so that the parser needs no torch


def add_parser(sub) -> None:
    """Add ``ensemble`` to ``cmidd``'s subparsers."""
    e = sub.add_parser("ensemble", help="combine distilled sets (top-k of a search or registered versions)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-search", default=None, metavar="RUN_ID", help="the search's parent run")
    src.add_argument("--versions", type=versions, default=None, metavar="V1,V2,...",
                     help="versions of distilled-<dataset>-ipc<k> (with --dataset, --ipc)")
    e.add_argument("--top", type=positive_int, default=3, help="trials to combine with --from-search (3)")
    add_dataset_ipc(e, required=False)
    e.add_argument("--mode", choices=MODES, default="concat",
                   help="concat: IPC grows k-fold; per-class-best: each class from its best source, IPC kept")
    add_set(e, "evaluation settings", metavar="eval.KEY=VALUE")
    e.add_argument("--seed", type=int, default=0, help="seed of the ensemble's evaluation (0)")
    add_tracking_uri(e)
    e.set_defaults(fn=command)


def eval_cfg(overrides: list[str]):
    """The ``EvalCfg`` of ``--set eval.KEY=VALUE`` overrides.

    Raises:
        ConfigError: a field outside ``eval``, or a bad value (one line per problem, as for job files).
    """
    from pydantic import ValidationError

    from ..config import EvalCfg, apply_overrides, format_error

    raw = apply_overrides({}, overrides)
    if set(raw) - {"eval"}:
        raise ConfigError(f"--set: only eval.* fields apply to an ensemble, got {sorted(set(raw) - {'eval'})}")
    try:
        return EvalCfg.model_validate(raw.get("eval", {}))
    except ValidationError as e:
        raise ConfigError(format_error("--set", e).replace("--set: ", "--set: eval.")) from None


def command(args) -> None:
    """Build, evaluate, log and register the combined set; print its table and version."""
    from ..app import ensemble, open_store
    from ..report import results_table

    cfg = eval_cfg(args.set)
    if not args.from_search and not (args.dataset and args.ipc and args.versions):
        raise ConfigError("--versions: needs --dataset and --ipc too (or use --from-search RUN_ID)")
    r = ensemble(open_store(args.tracking_uri), args.mode, cfg, args.seed, from_search=args.from_search,
                 top=args.top, dataset=args.dataset, ipc=args.ipc, versions=args.versions)
    print(results_table(r.rows))
    print(f"ensemble of {', '.join(r.sources)} ({args.mode}, IPC {r.synset.ipc})")
    print(f"mlflow run: {r.run_id}")
    alias = f" [{r.version['alias']}]" if r.version["alias"] else ""
    print(f"registered: {r.version['name']} version {r.version['version']}{alias}")

"""``cmidd search SPACE.yaml``: Ray Tune + Optuna over a search space, every trial an MLflow run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._args import add_address, add_json, add_resume, add_set, add_tracking_uri
from .run import naming_file


EXAMPLES = """examples:
  cmidd search search_spaces/digits_dmcmi.yaml                                  # local Ray, sqlite:///mlflow.db
  cmidd search search_spaces/digits_dmcmi.yaml --set search.num_samples=4 --set base.method.iterations=20
  cmidd search search_spaces/digits_dmcmi.yaml --resume                         # continue an interrupted search
  cmidd search search_spaces/digits_dmcmi.yaml --address auto --tracking-uri http://127.0.0.1:5000
  cmidd search search_spaces/digits_dmcmi.yaml --json | jq .summary.best
"""


def add_parser(sub) -> None:
    """Add ``search`` to ``cmidd``'s subparsers."""
    s = sub.add_parser("search", help="Ray Tune + Optuna search over a space YAML (search_spaces/), tracked in MLflow",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("space", type=Path, help="the search-space file (search_spaces/*.yaml)")
    add_set(s, "override a field of the space (search.num_samples=4) or of its base job (base.ipc=5)")
    add_resume(s, "continue the interrupted search in its storage folder")
    add_address(s, "Ray cluster to run the trials on (default: $RAY_ADDRESS, else a local Ray)")
    add_tracking_uri(s, "MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here; an "
                        "http:// mlflow server allows concurrent trials)")
    add_json(s)
    s.set_defaults(fn=command)


def command(args) -> None:
    """Run the search; print its trials, the best one, what it registered and the parent run."""
    from ..app import run_search
    from ..config import load_search
    from ..search_report import pareto_rows, pareto_table, summary_table, zero_arm_verdict

    cfg = load_search(args.space, args.set)
    with naming_file(args.space):  # the data-dependent rules, for every searched ipc, before anything starts
        check_search_data(cfg)
    with naming_file(args.space):  # a busy storage folder, an unreachable address name the space file too
        summary = run_search(cfg, args.tracking_uri, address=args.address, resume=args.resume,
                             progress=not args.json)
    if args.json:  # the summary logged as trials.json, the zero-arm verdict and the registry's answers
        from ..curves import strict

        print(json.dumps({"summary": strict(summary), "verdict": zero_arm_verdict(summary, cfg),
                          "answers": registered_answers(summary["registered"], args.tracking_uri)}, default=str))
        return
    print(summary_table(summary, cfg.search.metric, cfg))
    if cfg.search.multi:
        print(f"Pareto front ({len(summary['pareto'])} of {len(summary['trials'])} trials):")
        print(pareto_table(cfg, pareto_rows(cfg, summary["trials"])))
    print(zero_arm_verdict(summary, cfg))  # always: the verdict, or why it cannot decide
    best = summary["best"]
    print(f"best: trial {best['trial_id']} ({cfg.search.metric} {best['metric']:.4f}), run {best['run_id']}")
    for v in summary["registered"]:
        how = "re-scored and registered" if v.get("rescored") else "registered"
        print(f"{how}: {v['name']} version {v['version']} (run {v['run_id']}) under protocol {v.get('protocol', '-')}")
    print("\n".join(registered_answers(summary["registered"], args.tracking_uri)))
    print(f"mlflow parent run: {summary['parent_run_id']} (experiment {summary['experiment']})")
    from ..app import open_store
    from ..redact import redact

    print(redact(open_store(args.tracking_uri).run_hint(summary["parent_run_id"])))
    if "optuna_study" in summary:
        print(f"optuna study {summary['optuna_study']['name']}: optuna-dashboard {summary['optuna_study']['storage']}")


def registered_answers(registered: list[dict], uri: str | None) -> list[str]:
    """Per model and protocol the search registered into: the best version there and its gain over random-real."""
    from ..app import open_store, search_answers
    from ..report import format_gain

    return [f"best of {best['name']} under protocol {best['protocol']['id']}: version {best['version']} "
            f"{best['value']:.4f}, {format_gain(best['baseline'])}"
            for best in search_answers(open_store(uri), registered)]


def check_search_data(cfg) -> None:
    """The base job's data loads and every searched ipc fits its smallest class (unless the data is searched).

    Raises:
        ConfigError: naming the field, the rule and the value (``DataError`` for the data's rules).
    """
    from ..runner import check_job_data, load_job_data

    if any(k.startswith("data.") for k in cfg.params):
        return
    data = load_job_data(cfg.base)
    for ipc in cfg.params["ipc"].examples() if "ipc" in cfg.params else [cfg.base.ipc]:
        check_job_data(cfg.base.model_copy(update={"ipc": ipc}), data)

"""The MLflow subcommands of ``cmidd``: ``best``, ``pull``, ``runs``, and the tracked path of ``run``.

``cli.py`` adds them with ``add_commands(sub)`` and, for ``run``, ``add_run_options(r)``; it keeps the
exit-code mapping (ConfigError -> 2, CmiddError -> 1). mlflow is imported only when a command runs, so
``cmidd --help`` and ``import cmidd.cli`` stay light.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

EXAMPLES = """examples:
  cmidd best --dataset digits --ipc 10
  cmidd best --dataset digits --ipc 10 --metric acc/ConvNetD2 --json
  cmidd pull --dataset digits --ipc 10 --out sets/digits-ipc10          # the champion
  cmidd pull --dataset digits --ipc 10 --version 3 --out sets/v3
  cmidd runs -n 10 --tracking-uri http://127.0.0.1:5000
"""

DEFAULT = "acc/cross_arch_mean"  # = tracking.DEFAULT_METRIC; repeated so that the parser needs no mlflow
URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir)"


def quiet_mlflow() -> None:
    """No progress bars for small artifact downloads, no deprecation notices from MLflow's own internals
    (``cli.main`` turns DeprecationWarnings on for cmidd's users; MLflow's are not theirs to act on)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", category=DeprecationWarning,
                            module=r"(mlflow|sqlalchemy|alembic)(\.|$)")


def add_run_options(run_parser: argparse.ArgumentParser) -> None:
    """``--tracking-uri``, ``--address``, ``--resume-run ID`` and ``--no-track`` for ``cmidd run``."""
    run_parser.add_argument("--tracking-uri", default=None, help=URI_HELP)
    run_parser.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                            help="Ray cluster for jobs with scaling.workers > 1 (default: a local Ray on this machine)")
    either = run_parser.add_mutually_exclusive_group()
    either.add_argument("--resume-run", default=None, metavar="RUN_ID",
                        help="continue this MLflow run from its last checkpoint (downloaded from MLflow)")
    either.add_argument("--no-track", action="store_true", help="do not log to MLflow")


def run_tracked(args, job=None):
    """Run ``args.job`` (with ``--set``) inside an MLflow run; returns the ``JobResult``.

    Prints the run id and what was registered; the caller prints the result tables as for untracked runs.
    """
    quiet_mlflow()
    from .config import load_job
    from .tracking import tracked_run

    job = job if job is not None else load_job(args.job, args.set)
    tracked = tracked_run(job, args.tracking_uri, resume_run_id=args.resume_run, resume=args.resume)
    print(f"mlflow run: {tracked.run_id} ({tracked.uri})")
    for v in tracked.versions:
        alias = f" [{v['alias']}]" if v["alias"] else ""
        print(f"registered: {v['name']} version {v['version']}{alias}")
    return tracked.result


def _cmd_best(args) -> int:
    quiet_mlflow()
    from .tracking import best_set

    best = best_set(args.dataset, args.ipc, args.metric, args.tracking_uri)
    if args.json:
        print(json.dumps(best, sort_keys=False))
        return 0
    print(format_best(best, args.metric))
    return 0


def format_best(best: dict, metric: str) -> str:
    """Human-readable lines for a ``best_set`` result."""
    p, m = best["params"], best["metrics"]
    alias = f" [{best['alias']}]" if best["alias"] else ""
    proxies = "none"
    if float(p.get("cmi.lam", "0")) > 0:
        ref = p.get("proxies.from_registry", "None")
        proxies = f"{ref} (registry)" if ref != "None" else p.get("proxies.set", "-")
    lines = [
        f"{best['name']} version {best['version']}{alias}",
        f"  run       {best['run_id']}",
        f"  method    {p.get('method.name', '-')}   lambda {p.get('cmi.lam', '-')}   proxy set {proxies}",
        f"  {metric} = {m[metric]:.4f}",
    ]
    for k in sorted(k for k in m if k.startswith("acc/") and k != metric):
        std = m.get(k.replace("acc/", "acc_std/", 1))
        lines.append(f"  {k:<24} {m[k]:.4f}" + (f" +- {std:.4f}" if std is not None else ""))
    lines.append(f"  source    {best['source']}")
    return "\n".join(lines)


def _cmd_pull(args) -> int:
    quiet_mlflow()
    from .tracking import pull

    out = pull(args.dataset, args.ipc, args.out, version=args.version, alias=args.alias,
               uri=args.tracking_uri)
    rec = json.loads((out / "registry.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"pulled {rec['name']} version {rec['version']} (run {rec['run_id']}) to {out}")
    print(f"checksums verified (content sha256 {manifest['content_sha256'][:16]})")
    print("load it with:")
    print("  from cmidd.synthetic import SyntheticSet")
    print(f"  synset = SyntheticSet.load({str(out)!r})  # verifies the sha256 again")
    return 0


def _cmd_runs(args) -> int:
    quiet_mlflow()
    from .tracking import list_runs

    rows = list_runs(args.tracking_uri, args.n, args.experiment)
    if not rows:
        print("no runs")
        return 0
    print(runs_table(rows))
    return 0


def runs_table(rows: list[dict]) -> str:
    """A plain-text table of ``list_runs`` rows."""
    cols = ["run_id", "experiment", "kind", "status", "start", "dataset", "ipc", "method", "lambda", "acc"]
    cells = [[r["run_id"][:12] if c == "run_id" else
              (f"{100 * r[c]:.1f}" if r[c] is not None else "-") if c == "acc" else str(r[c])
              for c in cols] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(cols, *cells)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*cols), rule, *(fmt.format(*c) for c in cells)])


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_commands(sub) -> None:
    """Add ``best``, ``pull`` and ``runs`` to ``cmidd``'s subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    b = sub.add_parser("best", help="the best registered distilled set of a data set and IPC",
                       epilog=EXAMPLES, formatter_class=fmt)
    b.add_argument("--dataset", required=True)
    b.add_argument("--ipc", required=True, type=_positive_int)
    b.add_argument("--metric", default=DEFAULT, help=f"rank by this run metric, higher is better ({DEFAULT})")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--tracking-uri", default=None, help=URI_HELP)
    b.set_defaults(fn=_cmd_best)

    p = sub.add_parser("pull", help="download a registered distilled set and verify its checksums",
                       epilog=EXAMPLES, formatter_class=fmt)
    p.add_argument("--dataset", required=True)
    p.add_argument("--ipc", required=True, type=_positive_int)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=_positive_int, default=None)
    which.add_argument("--alias", default=None, help="default: champion")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--tracking-uri", default=None, help=URI_HELP)
    p.set_defaults(fn=_cmd_pull)

    r = sub.add_parser("runs", help="list recent MLflow runs", epilog=EXAMPLES, formatter_class=fmt)
    r.add_argument("-n", type=_positive_int, default=20, help="how many (default 20)")
    r.add_argument("--experiment", default=None, help="only this experiment (a job's name)")
    r.add_argument("--tracking-uri", default=None, help=URI_HELP)
    r.set_defaults(fn=_cmd_runs)
    add_ensemble_command(sub)


ENSEMBLE_EXAMPLES = """examples:
  cmidd ensemble --from-search RUN_ID --top 3 --mode concat             # IPC grows 3-fold
  cmidd ensemble --dataset digits --ipc 10 --versions 1,2,3 --mode per-class-best --set eval.epochs=100
"""


def _versions(text: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated version numbers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated version numbers >= 1, got {text!r}")
    return out


def _cmd_ensemble(args) -> int:
    quiet_mlflow()
    from .config import EvalCfg, format_error, apply_overrides
    from .tracking import ensemble_from_search, ensemble_from_versions
    from .errors import ConfigError
    from .report import results_table

    raw = apply_overrides({}, args.set)
    if set(raw) - {"eval"}:
        raise ConfigError(f"--set: only eval.* fields apply to an ensemble, got {sorted(set(raw) - {'eval'})}")
    try:
        cfg = EvalCfg.model_validate(raw.get("eval", {}))
    except Exception as e:  # pydantic ValidationError: one line per problem, as for job files
        from pydantic import ValidationError

        if not isinstance(e, ValidationError):
            raise
        raise ConfigError(format_error("--set", e).replace("--set: ", "--set: eval.")) from None
    if args.from_search:
        r = ensemble_from_search(args.from_search, args.top, args.mode, cfg, args.tracking_uri, args.seed)
    else:
        if not (args.dataset and args.ipc and args.versions):
            raise ConfigError("--versions: needs --dataset and --ipc too (or use --from-search RUN_ID)")
        r = ensemble_from_versions(args.dataset, args.ipc, args.versions, args.mode, cfg, args.tracking_uri,
                                   args.seed)
    print(results_table(r.rows))
    print(f"ensemble of {', '.join(r.sources)} ({args.mode}, IPC {r.synset.ipc})")
    print(f"mlflow run: {r.run_id}")
    alias = f" [{r.version['alias']}]" if r.version["alias"] else ""
    print(f"registered: {r.version['name']} version {r.version['version']}{alias}")
    return 0


def add_ensemble_command(sub) -> None:
    """``cmidd ensemble``: a set built from the top trials of a search or from registered versions."""
    e = sub.add_parser("ensemble", help="combine distilled sets (top-k of a search or registered versions)",
                       epilog=ENSEMBLE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-search", default=None, metavar="RUN_ID", help="the search's parent run")
    src.add_argument("--versions", type=_versions, default=None, metavar="V1,V2,...",
                     help="versions of distilled-<dataset>-ipc<k> (with --dataset, --ipc)")
    e.add_argument("--top", type=_positive_int, default=3, help="trials to combine with --from-search (3)")
    e.add_argument("--dataset", default=None)
    e.add_argument("--ipc", type=_positive_int, default=None)
    e.add_argument("--mode", choices=["concat", "per-class-best"], default="concat",
                   help="concat: IPC grows k-fold; per-class-best: each class from its best source, IPC kept")
    e.add_argument("--set", action="append", default=[], metavar="eval.KEY=VALUE", help="evaluation settings")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--tracking-uri", default=None, help=URI_HELP)
    e.set_defaults(fn=_cmd_ensemble)

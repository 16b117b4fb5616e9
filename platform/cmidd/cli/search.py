"""``cmidd search SPACE.yaml``: Ray Tune + Optuna over a search space, every trial an MLflow run."""

from __future__ import annotations

from pathlib import Path

from ._args import add_address, add_resume, add_set, add_tracking_uri
from .run import naming_file


def add_parser(sub) -> None:
    """Add ``search`` to ``cmidd``'s subparsers."""
    s = sub.add_parser("search", help="Ray Tune + Optuna search over a space YAML (search_spaces/), tracked in MLflow")
    s.add_argument("space", type=Path)
    add_set(s, "override a field of the space (search.num_samples=4) or of its base job (base.ipc=5)")
    add_resume(s, "continue the interrupted search in its storage folder")
    add_address(s, "Ray cluster to run the trials on (default: $RAY_ADDRESS, else a local Ray)")
    add_tracking_uri(s, "MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here; an "
                        "http:// mlflow server allows concurrent trials)")
    s.set_defaults(fn=command)


def command(args) -> None:
    """Run the search; print its trials, the best one, what it registered and the parent run."""
    from ..app import quiet_mlflow
    from ..config import load_search

    cfg = load_search(args.space, args.set)
    with naming_file(args.space):  # the data-dependent rules, for every searched ipc, before anything starts
        check_search_data(cfg)
    quiet_mlflow()
    from ..ray.tune import run_search, summary_table, zero_arm_verdict

    with naming_file(args.space):  # a busy storage folder, an unreachable address name the space file too
        summary = run_search(cfg, args.tracking_uri, address=args.address, resume=args.resume)
    print(summary_table(summary, cfg.search.metric))
    verdict = zero_arm_verdict(summary, cfg)
    if verdict:
        print(verdict)
    best = summary["best"]
    print(f"best: trial {best['trial_id']} ({cfg.search.metric} {best['metric']:.4f}), run {best['run_id']}")
    for v in summary["registered"]:
        print(f"registered: {v['name']} version {v['version']} (run {v['run_id']})")
    print(f"mlflow parent run: {summary['parent_run_id']} (experiment {summary['experiment']})")


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

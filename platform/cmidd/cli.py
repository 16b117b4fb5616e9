"""The ``cmidd`` command. The only place that prints errors and picks exit codes.

Exit codes: 0 ok; 2 bad input (one line, nothing written); 1 runtime failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from .cli_tracking import add_commands, add_run_options, quiet_mlflow, run_tracked
from .errors import CmiddError, ConfigError

EXAMPLES = """examples:
  cmidd demo                                   # the main job: digits, DM vs DM+CMI vs random-real
  cmidd demo --quick --out runs/demo-quick     # the same at toy size (< 3 min)
  cmidd run jobs/distill_dm_digits_ipc10.yaml --set cmi.lam=100 --set ipc=1
  cmidd run jobs/distill_dm_digits_ipc10.yaml --resume
  cmidd run jobs/distill_dmcmi_digits_ipc10_2workers.yaml --address auto   # Ray Train on a running cluster
  cmidd validate jobs/*.yaml
  cmidd search search_spaces/digits_dmcmi.yaml [--resume] [--address auto]   # Ray Tune + Optuna over lambda, ...
  cmidd ls nets 'ConvNet*'
  cmidd best --dataset digits --ipc 10 --json
  cmidd pull --dataset digits --ipc 10 --alias champion --out runs/best
  cmidd runs
  cmidd bench --quick --out runs/bench-quick   # speed + quality report (< 10 min)
  cmidd bench --suite speed --device cuda
  cmidd ensemble --from-search RUN_ID --top 3 --mode concat
"""


def _cmd_run(args) -> int:
    from .config import load_job
    from .report import results_table
    from .launch import run_job

    job = load_job(args.job, args.set)
    if args.address is not None and getattr(job, "scaling", None) is not None and job.scaling.workers > 1:
        from .ray import connect

        connect(args.address)
    result = run_job(job, resume=args.resume) if args.no_track else run_tracked(args, job)
    if result.rows:
        print(results_table(result.rows))
    for k, v in result.metrics.items():
        if not k.startswith(("acc", "baseline")):
            print(f"{k}: {v:.4g}")
    if result.synset is not None:
        print(f"synthetic set: {result.outdir / 'synthetic'} (sha256 {result.synset.sha256()[:16]})")
    print(f"results: {result.outdir / 'result.json'}")
    return 0


def _cmd_validate(args) -> int:
    from .config import load_job

    bad = 0
    for f in args.files:
        try:
            job = load_job(f)
            print(f"ok: {f} ({job.kind})")
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            bad += 1
    return 2 if bad else 0


def _listing(kind: str):
    from .catalog import catalog

    return catalog()[kind]


def _cmd_ls(args) -> int:
    names = _listing(args.what).names(args.pattern)
    if args.what == "proxy-sets":  # a set is a recipe: say what is in it
        from .proxy_sets import describe

        width = max(map(len, names), default=0)
        for name in names:
            print(f"{name:<{width}}  {describe(name)}")
        return 0
    for name in names:
        print(name)
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    uri = None
    if not args.no_track:
        from .tracking import resolve_uri

        quiet_mlflow()
        uri = resolve_uri(args.tracking_uri)
    summary = run_demo(args.out, quick=args.quick, tracking_uri=uri)
    print(summary["table"])
    print(f"results: {Path(args.out) / 'results.json'}")
    if uri is not None:
        best = summary["best"]
        print(f"\ncmidd best --dataset digits --ipc {summary['ipc']} --tracking-uri {uri}")
        print(f"  {best['name']} version {best['version']} (run {best['run_id'][:8]}, "
              f"method {best['params'].get('method.name')}, lam {best['params'].get('cmi.lam')}): "
              f"acc/cross_arch_mean {best['metrics'].get('acc/cross_arch_mean', float('nan')):.4f}")
    return 0


def _cmd_bench(args) -> int:
    import os

    from .bench import plan_for, run_bench

    report = run_bench(args.suite.split(","), plan_for(args.quick, args.repeats), args.device, args.out)
    print((Path(args.out) / "bench.md").read_text())
    missed = [t["target"] for t in report["targets"] if not t["met"]]
    print(f"targets: {len(report['targets']) - len(missed)} met, {len(missed)} missed")
    print(f"report: {Path(args.out) / 'bench.json'}, {Path(args.out) / 'bench.md'}")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        from .bench import report_metrics
        from .tracking import log_report, resolve_uri

        quiet_mlflow()
        files = ["bench.json", "bench.md", *report["plots"]]
        run_id = log_report(resolve_uri(uri), "cmidd-bench", f"bench-{'quick' if args.quick else 'full'}",
                            report["plan"], report_metrics(report), Path(args.out), files)
        print(f"mlflow run: {run_id} (experiment cmidd-bench)")
    return 0


def _cmd_search(args) -> int:
    from .cli_tracking import quiet_mlflow
    from .config import load_search

    cfg = load_search(args.space, args.set)
    quiet_mlflow()
    from .ray.tune import run_search, summary_table

    summary = run_search(cfg, args.tracking_uri, address=args.address, resume=args.resume)
    print(summary_table(summary, cfg.search.metric))
    best = summary["best"]
    print(f"best: trial {best['trial_id']} ({cfg.search.metric} {best['metric']:.4f}), run {best['run_id']}")
    for v in summary["registered"]:
        print(f"registered: {v['name']} version {v['version']} (run {v['run_id']})")
    print(f"mlflow parent run: {summary['parent_run_id']} (experiment {summary['experiment']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cmidd", description="Dataset distillation with a class-aware CMI regularizer.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a job YAML (distill | pretrain-proxies | evaluate)")
    r.add_argument("job", type=Path)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    r.add_argument("--resume", action="store_true", help="continue from the job's checkpoint")
    add_run_options(r)
    r.set_defaults(fn=_cmd_run)

    v = sub.add_parser("validate", help="check job YAML files without running them")
    v.add_argument("files", nargs="+", type=Path)
    v.set_defaults(fn=_cmd_validate)

    ls = sub.add_parser("ls", help="list registered names")
    ls.add_argument("what", choices=["nets", "methods", "datasets", "proxy-sets", "cmi-aggs"])
    ls.add_argument("pattern", nargs="?", default="*")
    ls.set_defaults(fn=_cmd_ls)

    s = sub.add_parser("search", help="Ray Tune + Optuna search over a space YAML (search_spaces/), tracked in MLflow")
    s.add_argument("space", type=Path)
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the space (search.num_samples=4) or of its base job (base.ipc=5)")
    s.add_argument("--resume", action="store_true", help="continue the interrupted search in its storage folder")
    s.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="Ray cluster to run the trials on (default: $RAY_ADDRESS, else a local Ray)")
    s.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow.db here; an http:// mlflow server allows concurrent trials)")
    s.set_defaults(fn=_cmd_search)

    d = sub.add_parser("demo", help="the main job on digits: DM and DM+CMI vs random-real")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--quick", action="store_true", help="toy sizes, finishes in under 3 minutes")
    d.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite:///mlflow.db here)")
    d.add_argument("--no-track", action="store_true", help="write results to --out only, not to MLflow")
    d.set_defaults(fn=_cmd_demo)

    b = sub.add_parser("bench", help="speed and quality side by side: bench.json, bench.md and plots")
    b.add_argument("--suite", default="all",
                   help="speed | quality | reproduce | ray | search | ensemble | all (not reproduce), or a comma list")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    b.add_argument("--out", type=Path, default=Path("runs/bench"))
    b.add_argument("--quick", action="store_true", help="reduced sizes, under 10 minutes on 2 CPU cores")
    b.add_argument("--repeats", type=int, default=None, help="timed repetitions per speed setting (default 5)")
    b.add_argument("--tracking-uri", default=None, help="also log the report to MLflow (default: "
                   "$MLFLOW_TRACKING_URI if set, else not logged)")
    b.set_defaults(fn=_cmd_bench)
    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cmidd`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="[cmidd] %(message)s", stream=sys.stderr
    )
    warnings.formatwarning = lambda msg, cat, *a, **k: f"[cmidd] warning: {msg}\n"
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CmiddError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

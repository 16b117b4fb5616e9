"""``cmidd bench``: the benchmark suites side by side (``cmidd.bench``), optionally logged to MLflow."""

from __future__ import annotations

import os
from pathlib import Path

from ._args import add_out, add_set, add_tracking_uri


def add_parser(sub) -> None:
    """Add ``bench`` to ``cmidd``'s subparsers."""
    b = sub.add_parser("bench", help="speed and quality side by side: bench.json, bench.md and plots")
    b.add_argument("--suite", default="all",
                   help="speed | quality | reproduce | ray | search | ensemble | all (not reproduce), or a comma list")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where the benchmarks run (cpu)")
    add_out(b, "runs/bench", "folder of the report and its figures (runs/bench)")
    b.add_argument("--quick", action="store_true", help="reduced sizes, under 10 minutes on 2 CPU cores")
    b.add_argument("--repeats", type=int, default=None, help="timed repetitions per speed setting (default 5)")
    b.add_argument("--budget", default=None,
                   help="the reproduce suite's budget: full | quick | cpu (IPC 1) | cpu10 (IPC 10) "
                        "(default: quick with --quick, else full)")
    b.add_argument("--speed-methods", default=None, help="speed suite: only these variants, comma list (e.g. "
                   "gm(batched),gm(loop): gradient matching in one vmap pass beside the per-class loop)")
    b.add_argument("--speed-ipcs", default=None, help="speed suite: only these IPCs, comma list (e.g. 10)")
    b.add_argument("--speed-images", default=None, help="speed suite: cifar32 | digits8 | mnist28, comma list")
    add_set(b, "override a field of every job of the reproduce suite (data.name=mnist, data.root=DIR, ...)")
    add_tracking_uri(b, "also log the report to MLflow (default: $MLFLOW_TRACKING_URI if set, else not logged)")
    b.set_defaults(fn=command)


def command(args) -> None:
    """Run the suites, print the report and the targets, and log it to MLflow when a store is given."""
    from ..bench import plan_for, run_bench

    suites = args.suite.split(",")
    speed = {"methods": args.speed_methods, "ipcs": args.speed_ipcs, "images": args.speed_images}
    plan = plan_for(args.quick, args.repeats, tuple(args.set), tuple(suites), args.budget, speed)
    report = run_bench(suites, plan, args.device, args.out)
    print((Path(args.out) / "bench.md").read_text())
    missed = [t["target"] for t in report["targets"] if not t["met"]]
    print(f"targets: {len(report['targets']) - len(missed)} met, {len(missed)} missed")
    print(f"report: {Path(args.out) / 'bench.json'}, {Path(args.out) / 'bench.md'}")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        log_to_mlflow(uri, report, Path(args.out), args.quick)


def log_to_mlflow(uri: str, report: dict, out: Path, quick: bool) -> None:
    """The report as one finished run of the ``cmidd-bench`` experiment (files as artifacts)."""
    from ..app import open_store, tracking_uri
    from ..bench import report_metrics

    files = ["bench.json", "bench.md", *report["plots"]]
    run_id = open_store(tracking_uri(uri)).log_report("cmidd-bench", f"bench-{'quick' if quick else 'full'}",
                                                      report["plan"], report_metrics(report), out, files)
    print(f"mlflow run: {run_id} (experiment cmidd-bench)")

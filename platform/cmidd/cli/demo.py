"""``cmidd demo``: the main job on digits (DM and DM+CMI against random-real), tracked unless ``--no-track``."""

from __future__ import annotations

from pathlib import Path

from ..names import CROSS_ARCH_MEAN
from ..redact import redact
from ._args import add_json, add_no_track, add_out, add_tracking_uri, json_stdout


def add_parser(sub) -> None:
    """Add ``demo`` to ``cmidd``'s subparsers."""
    d = sub.add_parser("demo", help="the main job on digits: DM and DM+CMI vs random-real")
    add_out(d, "runs/demo", "folder of the jobs' outputs, results.json, results.md and comparison.png (runs/demo)")
    d.add_argument("--quick", action="store_true", help="toy sizes, finishes in under 3 minutes")
    add_tracking_uri(d, "MLflow store (default: sqlite:///mlflow.db here)")
    add_no_track(d, "write results to --out only, not to MLflow")
    add_json(d)
    d.set_defaults(fn=command)


def command(args) -> None:
    """Run the demo; print its table and, when tracked, the best registered set."""
    from ..app import tracking_uri
    from ..demo import run_demo
    from ..lam import fmt_lam, lam_of
    from ..report import format_gain

    uri = None if args.no_track else tracking_uri(args.tracking_uri)
    with json_stdout(args.json):
        summary = run_demo(args.out, quick=args.quick, tracking_uri=uri)
    if args.json:  # results.json's mapping (and ``best`` when tracked), without the text table
        import json

        from ..curves import strict

        print(json.dumps(strict({k: v for k, v in summary.items() if k != "table"}), default=str))
        return
    print(summary["table"])
    print(f"results: {Path(args.out) / 'results.json'}")
    if uri is not None:
        from ..app import open_store

        print(redact(open_store(uri).run_hint(summary["parent_run_id"])))
        best = summary["best"]
        print(f"\ncmidd best --dataset digits --ipc {summary['ipc']} --protocol {best['protocol']['id']} "
              f"--tracking-uri {uri}")
        print(f"  {best['name']} version {best['version']} (run {best['run_id'][:8]}, "
              f"method {best['params'].get('method.name')}, lam {fmt_lam(lam_of(best['params'], best['metrics']))}): "
              f"{CROSS_ARCH_MEAN} {best['metrics'].get(CROSS_ARCH_MEAN, float('nan')):.4f}, "
              f"{format_gain(best['baseline'])}")

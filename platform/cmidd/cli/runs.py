"""``cmidd runs``: recent MLflow runs as a table."""

from __future__ import annotations

import argparse

from ._args import add_tracking_uri, positive_int
from .best import EXAMPLES


def add_parser(sub) -> None:
    """Add ``runs`` to ``cmidd``'s subparsers."""
    r = sub.add_parser("runs", help="list recent MLflow runs", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("-n", type=positive_int, default=20, help="how many (default 20)")
    r.add_argument("--experiment", default=None, help="only this experiment (a job's name)")
    add_tracking_uri(r)
    r.set_defaults(fn=command)


def command(args) -> None:
    """Print the runs, newest first (or ``no runs``)."""
    from ..app import quiet_mlflow

    quiet_mlflow()
    from ..tracking import list_runs

    rows = list_runs(args.tracking_uri, args.n, args.experiment)
    print(runs_table(rows) if rows else "no runs")


def runs_table(rows: list[dict]) -> str:
    """A plain-text table of ``list_runs`` rows."""
    cols = ["run_id", "experiment", "kind", "status", "start", "dataset", "ipc", "method", "lambda", "acc", "protocol"]
    cells = [[_cell(r, c) for c in cols] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(cols, *cells)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*cols), rule, *(fmt.format(*c) for c in cells)])


def _cell(row: dict, col: str) -> str:
    if col == "run_id":
        return row[col][:12]
    if col == "acc":
        return f"{100 * row[col]:.1f}" if row[col] is not None else "-"
    return str(row[col])

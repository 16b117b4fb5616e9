"""``cmidd runs``: recent MLflow runs as a table."""

from __future__ import annotations

import argparse

import json

from ._args import add_json, add_tracking_uri, positive_int
from .best import EXAMPLES


def add_parser(sub) -> None:
    """Add ``runs`` to ``cmidd``'s subparsers."""
    r = sub.add_parser("runs", help="list recent MLflow runs", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("-n", type=positive_int, default=20, help="how many (default 20)")
    r.add_argument("--experiment", default=None, help="only this experiment (a job's name)")
    add_tracking_uri(r)
    add_json(r)
    r.set_defaults(fn=command)


def command(args) -> None:
    """Print the runs, newest first (or ``no runs``)."""
    from ..app import open_store

    rows = open_store(args.tracking_uri).runs(args.n, args.experiment)
    if args.json:
        print(json.dumps({"runs": [typed(r) for r in rows]}))
    else:
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


# the JSON schema of ``cmidd runs --json``: {"runs": [row]}, each field of a row typed (null where unknown)
NUMBERS = {"ipc": int, "lambda": float, "acc": float}


def typed(row: dict) -> dict:
    """A ``list_runs`` row with numbers as numbers and ``-`` (unknown) as None."""
    out = {}
    for k, v in row.items():
        if v in ("-", None, ""):
            out[k] = None
        elif k in NUMBERS:
            try:
                out[k] = NUMBERS[k](v)
            except (TypeError, ValueError):
                out[k] = None
        else:
            out[k] = v
    return out

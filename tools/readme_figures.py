"""Write the demo's figures into the docs from a run's own files (no hand-copied numbers).

    .venv/bin/python tools/readme_figures.py runs/demo [--time "4 min 38 s"] [--command "make demo"]

Replaces the block between ``<!-- demo-results:start -->`` and ``<!-- demo-results:end -->`` in docs/demo.md with
``results.md`` of the run, its date (the file's modification time) and the command, and copies the run's
``comparison.png`` to docs/results/demo-comparison.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- demo-results:start -->", "<!-- demo-results:end -->"


def block(run: Path, command: str, took: str | None) -> str:
    results = json.loads((run / "results.json").read_text())
    when = dt.datetime.fromtimestamp((run / "results.json").stat().st_mtime, dt.timezone.utc)
    seconds = results.get("seconds", {})
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    head = f"`{command}`, finished {when:%Y-%m-%d %H:%M} UTC" + (f", {took} wall in all" if took else "") + \
        (f" (distil + evaluate: {parts})" if parts else "") + ":"
    return f"{START}\n{head}\n\n```\n{(run / 'results.md').read_text().rstrip()}\n```\n{END}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="the demo's --out folder (results.json, results.md, comparison.png)")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "demo.md")
    ap.add_argument("--command", default="make demo")
    ap.add_argument("--time", default=None, help="the command's measured wall time, as text")
    args = ap.parse_args(argv)
    text = args.doc.read_text()
    if START not in text or END not in text:
        print(f"readme_figures: {args.doc} has no {START} ... {END} block", file=sys.stderr)
        return 2
    new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block(args.run, args.command, args.time),
                 text, flags=re.S)
    args.doc.write_text(new)
    if (args.run / "comparison.png").is_file():
        shutil.copy(args.run / "comparison.png", args.doc.parent / "results" / "demo-comparison.png")
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``cmidd validate FILE.yaml...``: check job files without running them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ._args import AlreadyReported, add_json


def add_parser(sub) -> None:
    """Add ``validate`` to ``cmidd``'s subparsers."""
    v = sub.add_parser("validate", help="check job and search-space YAML files without running them")
    v.add_argument("files", nargs="+", type=Path, help="job or search-space YAML files (jobs/*.yaml, search_spaces/*.yaml)")
    add_json(v)
    v.set_defaults(fn=command)


def command(args) -> None:
    """One line per file: ``ok: FILE (kind)`` or its error. A search space (a file with ``params``) is checked as one.

    Raises:
        AlreadyReported: some file was invalid (its error lines are printed already).
    """
    from ..config import load_job, load_search, read_yaml

    bad, report = 0, []  # --json: {"files": [{"file", "ok", "kind" | "error"}]}
    for f in args.files:
        try:
            if "params" in read_yaml(f):
                cfg = load_search(f)
                report.append({"file": str(f), "ok": True, "kind": "search", "params": list(cfg.params)})
                line = f"ok: {f} (search over {', '.join(cfg.params)})"
            else:
                job = load_job(f)
                report.append({"file": str(f), "ok": True, "kind": job.kind})
                line = f"ok: {f} ({job.kind})"
            if not args.json:
                print(line)
        except ConfigError as e:
            report.append({"file": str(f), "ok": False, "error": str(e)})
            if not args.json:
                print(f"error: {e}", file=sys.stderr)
            bad += 1
    if args.json:
        print(json.dumps({"files": report}))
    if bad:
        raise AlreadyReported(f"{bad} of {len(args.files)} files are invalid")

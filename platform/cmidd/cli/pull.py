"""``cmidd pull``: download a registered distilled set and verify its checksums."""

from __future__ import annotations

import argparse
import json

from ._args import add_dataset_ipc, add_json, add_out, add_tracking_uri, positive_int
from .best import EXAMPLES


def add_parser(sub) -> None:
    """Add ``pull`` to ``cmidd``'s subparsers."""
    p = sub.add_parser("pull", help="download a registered distilled set and verify its checksums",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_ipc(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=positive_int, default=None, help="this registered version (a number)")
    which.add_argument("--alias", default=None, help="default: champion (the default protocol's champion)")
    which.add_argument("--protocol", default=None, metavar="ID|default",
                       help="the champion of this evaluation protocol (alias champion-<ID>)")
    add_out(p, None, "new or empty folder to write the set into (required)")
    add_tracking_uri(p)
    add_json(p)
    p.set_defaults(fn=command)


def command(args) -> None:
    """Pull the version into ``--out`` and say how to load it."""
    from ..app import open_store

    out = open_store(args.tracking_uri).pull(args.dataset, args.ipc, args.out, version=args.version,
                                             alias=args.alias, protocol=args.protocol)
    rec = json.loads((out / "registry.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    if args.json:  # {"name", "version", "run_id", "path", "protocol": {"id", "summary"}, "content_sha256", "ipc", ...}
        print(json.dumps({"name": rec["name"], "version": int(rec["version"]), "run_id": rec["run_id"],
                          "path": str(out), "protocol": {k: rec["protocol"][k] for k in ("id", "summary")},
                          "content_sha256": manifest["content_sha256"], "dataset": manifest.get("dataset"),
                          "ipc": manifest.get("ipc"), "method": manifest.get("method"), "lam": manifest.get("lam")}))
        return
    print(f"pulled {rec['name']} version {rec['version']} (run {rec['run_id']}) to {out}")
    print(f"scored under protocol {rec['protocol']['id']}: {rec['protocol']['summary']}")
    print(f"checksums verified (content sha256 {manifest['content_sha256'][:16]})")
    print("load it as a torch Dataset (verifies the sha256 again):")
    print(f"  import cmidd; ds = cmidd.load_set({str(out)!r})   # ds[i] -> (image, label); ds.mean, ds.std")

"""``cmidd evaluate``: re-score registered sets under one named evaluation protocol, and rank them there."""

from __future__ import annotations

import argparse

from ._args import add_dataset_ipc, add_json, add_tracking_uri, json_stdout, versions

EXAMPLES = """examples:
  cmidd evaluate --dataset digits --ipc 10 --protocol 73def0cc9f            # every set not yet scored under it
  cmidd evaluate --dataset digits --ipc 10 --protocol 73def0cc9f --versions 3,4
  cmidd best --dataset digits --ipc 10 --protocol 73def0cc9f                # then rank them there
"""


def add_parser(sub) -> None:
    """Add ``evaluate`` to ``cmidd``'s subparsers."""
    e = sub.add_parser("evaluate", help="re-score registered sets under one evaluation protocol (by its id)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_ipc(e)
    e.add_argument("--protocol", required=True, metavar="ID",
                   help="a protocol id (or unique prefix) recorded here (`cmidd best`, `cmidd runs` show them)")
    e.add_argument("--versions", type=versions, default=None, help="only these versions (1,2,3; default: all)")
    e.add_argument("--seed", type=int, default=0, help="evaluation seed (0)")
    e.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="where the evaluation nets train (auto: cuda when available)")
    add_tracking_uri(e)
    add_json(e)
    e.set_defaults(fn=command)


def command(args) -> None:
    """Score, register, then print the answer of ``best`` under that protocol."""
    from ..names import CROSS_ARCH_MEAN
    from ..app import open_store, rescore
    from .best import format_best

    with json_stdout(args.json):  # the versions scored now, then the store's answer under that protocol
        done, best = rescore(open_store(args.tracking_uri), args.dataset, args.ipc, args.protocol, args.versions,
                             args.seed, args.device)
    if args.json:  # the versions scored now and the registry's answer under that protocol
        import json

        from ..curves import strict

        print(json.dumps(strict({"scored": done, "best": best}), default=str))
        return
    for d in done:
        print(f"version {d['from_version']} scored under {args.protocol}: {CROSS_ARCH_MEAN} {d['value']:.4f} "
              f"-> registered as version {d['version']} (run {d['run_id']})")
    if not done:
        print(f"every selected set already has a version under protocol {args.protocol}")
    print()
    print(format_best(best, CROSS_ARCH_MEAN))

"""``cmidd ls KIND [PATTERN]``: the registered names of one plug-in kind, from ``cmidd.catalog``."""

from __future__ import annotations

import json

from ._args import add_json


def add_parser(sub) -> None:
    """Add ``ls`` to ``cmidd``'s subparsers."""
    from ..catalog import KINDS

    ls = sub.add_parser("ls", help="list registered names")
    ls.add_argument("what", choices=list(KINDS), help="the kind of plug-in to list")
    ls.add_argument("pattern", nargs="?", default="*", help="a shell-style pattern on the names ('ConvNet*'; default: all)")
    add_json(ls)
    ls.set_defaults(fn=command)


def command(args) -> None:
    """Print the names matching the pattern, one a line (proxy sets with a description of their recipe)."""
    from ..catalog import catalog
    from ..proxy_sets import describe

    names = catalog()[args.what].names(args.pattern)
    if args.json:
        described = args.what == "proxy-sets"
        print(json.dumps({"kind": args.what, "names": [{"name": n, **({"recipe": describe(n)} if described else {})}
                                                       for n in names]}))
        return
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {describe(name)}" if args.what == "proxy-sets" else name)

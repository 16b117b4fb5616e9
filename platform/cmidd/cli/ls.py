"""``cmidd ls KIND [PATTERN]``: the registered names of one plug-in kind, from one catalog."""

from __future__ import annotations

import importlib
from typing import Callable

# kind -> (module, its Registry): the one list of what ``cmidd ls`` shows. Imported only when listed, so the
# parser stays light (the registries pull in torch).
CATALOG: dict[str, tuple[str, str]] = {
    "nets": ("cmidd.nets", "NETS"),
    "methods": ("cmidd.methods", "METHODS"),
    "datasets": ("cmidd.data", "DATASETS"),
    "proxy-sets": ("cmidd.proxies", "PROXY_SETS"),
    "cmi-aggs": ("cmidd.cmi", "AGGREGATORS"),
}
# kinds whose entries are recipes: a one-line description beside each name
DESCRIBE: dict[str, tuple[str, str]] = {"proxy-sets": ("cmidd.proxies", "describe")}


def _attr(where: tuple[str, str]):
    module, name = where
    return getattr(importlib.import_module(module), name)


def registry(kind: str):
    """The registry listed as ``kind`` (a key of ``CATALOG``)."""
    return _attr(CATALOG[kind])


def add_parser(sub) -> None:
    """Add ``ls`` to ``cmidd``'s subparsers."""
    ls = sub.add_parser("ls", help="list registered names")
    ls.add_argument("what", choices=list(CATALOG))
    ls.add_argument("pattern", nargs="?", default="*")
    ls.set_defaults(fn=command)


def command(args) -> None:
    """Print the names matching the pattern, one a line (with a description for recipes)."""
    names = registry(args.what).names(args.pattern)
    describe: Callable[[str], str] | None = _attr(DESCRIBE[args.what]) if args.what in DESCRIBE else None
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {describe(name)}" if describe else name)

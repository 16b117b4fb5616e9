"""DD methods behind one interface (``base.Method``); each registers a factory ``fn(MethodContext)``."""

from ._registry import METHODS
from .base import Method, MethodContext
from . import dm, gm, idc, mtt  # noqa: E402,F401  (registration)


def build_method(ctx: MethodContext) -> Method:
    """Build the method named ``ctx.cfg.name``."""
    return METHODS.get(ctx.cfg.name)(ctx)


__all__ = ["METHODS", "Method", "MethodContext", "build_method"]

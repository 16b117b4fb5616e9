"""Every plug-in registry, by the name ``cmidd ls`` lists it under.

The one place that knows which registries exist: the config's name validators and ``cmidd ls`` read it. It
sits above the plug-in families (which import ``registry``), so no import cycle goes through it.
"""

from __future__ import annotations

from .registry import Registry

# The kinds, in ``cmidd ls`` order: a torch-free constant for the CLI parser's choices (``catalog()`` imports
# the families, which import torch).
KINDS = ("nets", "methods", "datasets", "proxy-sets", "cmi-aggs")


def catalog() -> dict[str, Registry]:
    """Every plug-in registry by the name ``cmidd ls`` lists it under, families imported (and so registered).

    The one place that knows which registries exist: config validators and ``cmidd ls`` both read it. The
    imports are deferred because the families import torch and the configs must not import them at load.

    Example:
        >>> "ConvNet" in catalog()["nets"]
        True
    """
    from .cmi import AGGREGATORS
    from .data import DATASETS
    from .methods import METHODS
    from .nets import NETS
    from .proxy_sets import PROXY_SETS

    return {"nets": NETS, "methods": METHODS, "datasets": DATASETS, "proxy-sets": PROXY_SETS,
            "cmi-aggs": AGGREGATORS}

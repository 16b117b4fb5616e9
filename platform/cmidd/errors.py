"""Exception hierarchy. The library raises these; only ``cmidd.cli`` maps them to exit codes.

``ConfigError`` and ``UnknownNameError`` and ``DataError`` are *bad input* (exit 2);
any other ``CmiddError`` is a runtime failure (exit 1).
"""


class CmiddError(Exception):
    """Base class of every error cmidd raises on purpose."""


class ConfigError(CmiddError):
    """A job/search file or a ``--set`` override is invalid. The message names file, field, rule, value."""


class UnknownNameError(ConfigError):
    """A plug-in name (net, method, dataset, proxy set, ...) is not registered."""


class DataError(ConfigError):
    """The data does not fit the config (missing root, IPC larger than a class, ...)."""


class DivergenceError(CmiddError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class IntegrityError(CmiddError):
    """A stored artifact does not match its recorded checksum (or is missing)."""



class TrackingOutage(CmiddError):
    """The MLflow store stayed unreachable for longer than the outage budget; the local output is intact."""

"""YAML in, one-line errors out: reading a mapping, ``--set a.b=v`` overrides, flattening for MLflow."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError


def format_error(source: str, err: ValidationError) -> str:
    """One line per pydantic error: ``source: a.b: message (got value)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        tail = "" if e["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        if e["type"] == "extra_forbidden":
            msg, tail = "unknown field", ""
        lines.append(f"{source}: {loc or '<root>'}: {msg}{tail}")
    return "; ".join(lines)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping raises ``ConfigError``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


# The checkout's folders of job files and search spaces (an editable install's home; a user passes paths instead).
REPO = Path(__file__).resolve().parents[3]
JOBS_DIR = REPO / "jobs"
SPACES_DIR = REPO / "search_spaces"


def load_raw(path: str | Path, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """``read_yaml(path)`` with each dotted field of ``fields`` (``{"method.iterations": 5}``) set: a job or space
    file plus the changes a caller makes to it (the one way to make a job in code)."""
    raw = read_yaml(path)
    for dotted, value in (fields or {}).items():
        _assign(raw, dotted, copy.deepcopy(value), str(path))
    return raw


def _assign(node: dict[str, Any], dotted: str, value: Any, source: str | None) -> None:
    """Set ``dotted`` (``cmi.lam``) in ``node`` in place, creating sections as needed."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source + ': ' if source else ''}{dotted}: {p!r} is not a section")
    node[leaf] = value


def set_path(raw: dict[str, Any], dotted: str, value: Any, source: str | None = None) -> dict[str, Any]:
    """A copy of ``raw`` with ``dotted`` (``cmi.lam``) set to ``value``, sections created as needed.

    Raises:
        ConfigError: a part of the path is a value, not a section (``source`` prefixes the message).
    """
    out = copy.deepcopy(raw)
    _assign(out, dotted, value, source)
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed with ``yaml.safe_load``) to a copy of ``raw``.

    Unknown paths are caught by validation (``extra="forbid"``); a malformed override raises here.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: expected key.path=value, got {item!r}")
        _assign(out, key.strip(), yaml.safe_load(value) if value.strip() else None, source)
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict to dotted keys (for MLflow params and tables)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out

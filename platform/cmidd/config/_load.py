"""YAML in, one-line errors out: reading a mapping, ``--set a.b=v`` overrides, flattening for MLflow."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError


def format_error(source: str, err: ValidationError, unions: dict[str, dict[str, set[str]]] | None = None) -> str:
    """One line per pydantic error: ``source: a.b: message (got value)``.

    ``unions``: field -> {tag: the member's field names} for a tagged union (``method``, told apart by ``method.name``): the
    tag pydantic puts in the path is dropped, an unknown field names the member it is unknown to, and an error
    ``name: ...`` raised on the union itself (an unregistered tag) is put on its ``name``.
    """
    lines = []
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if not str(p).startswith("function-after")]
        member = None
        for i in range(len(parts) - 1):
            if parts[i + 1] in (unions or {}).get(parts[i], {}):
                member = (parts[i], parts.pop(i + 1))
                break
        msg = e["msg"].removeprefix("Value error, ")
        if parts and parts[-1] in (unions or {}) and msg.startswith("name: "):  # the union's tag field itself
            parts, msg = [*parts, "name"], msg.removeprefix("name: ")
        loc = ".".join(parts)
        got = e.get("input")
        shown = repr(got)
        shown = shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"
        tail = "" if e["type"] in ("missing",) or isinstance(got, dict) else f" (got {shown})"
        if e["type"] == "extra_forbidden":
            msg, tail = "unknown field", ""
            if member is not None and unions is not None:
                field, tag = member
                others = [t for t, names in unions[field].items() if parts[-1] in names]
                msg = f"unknown field for {field} {tag}" + (f" (a field of {field} {', '.join(others)})"
                                                           if others else "")
        lines.append(f"{source}: {loc or '<root>'}: {msg}{tail}")
    return "; ".join(lines)


def _duplicate_key(node: yaml.Node, path: str = "") -> tuple[str, int] | None:
    """The dotted path and line of the first key given twice in one mapping of ``node``, or None."""
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            dotted = f"{path}.{key}" if path else str(key)
            if key is not None and key in seen:
                return dotted, k.start_mark.line + 1
            seen.add(key)
            found = _duplicate_key(v, dotted)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            found = _duplicate_key(v, f"{path}[{i}]")
            if found:
                return found
    return None


# The shape of any valid job or search space is small: its deepest field (a search's
# ``params.<field>.<distribution>: [lo, hi]`` or ``base.eval.epochs_by_arch.<arch>``) is 4 collections deep, and a
# file of a few hundred values. Anything far beyond is refused before PyYAML builds it: a 10,000-deep nesting
# (PyYAML's composer recurses: a RecursionError) or an alias bomb (a few lines that expand to 10**9 values).
MAX_DEPTH = 8  # nested mappings/lists
MAX_VALUES = 100_000  # values and collections once every alias is expanded
MAX_BYTES = 1 << 20  # the file itself


def _check_shape(text: str, where: str) -> None:
    """Refuse YAML nested deeper than ``MAX_DEPTH`` or expanding (aliases included) to more than ``MAX_VALUES``
    nodes, from PyYAML's event stream (no recursion, no expansion: linear in the text).

    Raises:
        ConfigError: naming ``where``, the rule and what was found.
        yaml.YAMLError: the text is not YAML (the caller words it).
    """
    sizes: dict[str, int] = {}  # anchor -> its node's expanded size
    stack: list[list] = []  # open collections: [anchor, size so far]
    total = 0

    def add(n: int) -> None:  # a finished node of expanded size n, counted into its parent (or the document)
        nonlocal total
        if stack:
            stack[-1][1] += n
        else:
            total += n
        if (stack[-1][1] if stack else total) > MAX_VALUES:
            raise ConfigError(f"{where}: must expand to at most {MAX_VALUES:,} values, but its aliases (*name) "
                              f"expand to more (an alias bomb?)")

    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([ev.anchor, 1])
            if len(stack) > MAX_DEPTH:
                raise ConfigError(f"{where}: must nest at most {MAX_DEPTH} mappings/lists deep (the schema's deepest "
                                  f"field is 4), but line {ev.start_mark.line + 1} is deeper")
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, n = stack.pop()
            if anchor is not None:
                sizes[anchor] = n
            add(n)
        elif isinstance(ev, yaml.ScalarEvent):
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
            add(1)
        elif isinstance(ev, yaml.AliasEvent):
            add(sizes.get(ev.anchor, 1))


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (line:column)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a non-empty YAML mapping whose keys are each given once.

    Raises:
        ConfigError: one line naming the file: it cannot be read, is not UTF-8 text, is not valid YAML,
            is empty, is not a mapping, or gives a key twice.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: <file>: must be a YAML file, but it is a folder")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: <file>: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: <file>: must be UTF-8 YAML text, but byte {e.object[e.start]:#04x} at offset "
                          f"{e.start} is not (a binary file?)") from None
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{path}: <file>: must be at most {MAX_BYTES // 1024} KiB of YAML, but has "
                          f"{len(text) // 1024} KiB")
    try:
        _check_shape(text, f"{path}: <file>")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        dup = _duplicate_key(node) if node is not None else None
        if dup:
            raise ConfigError(f"{path}: {dup[0]}: each key must be given once, but it is given again on line {dup[1]}")
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: <file>: invalid YAML: {_yaml_problem(e)}") from None
    if raw is None:
        raise ConfigError(f"{path}: <root>: must be a YAML mapping of fields, but the file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: <root>: the top level must be a mapping of fields, got a "
                          f"{type(raw).__name__} ({str(raw)[:40]!r})")
    bad = [k for k in raw if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: {bad[0]!r}: field names must be text, got {type(bad[0]).__name__} {bad[0]!r}")
    return raw


# The job files the commands read themselves (``cmidd demo``: demo_*.yaml; ``cmidd bench``: bench/*.yaml) ship
# inside the package as package data (pyproject.toml), found through importlib.resources: the same files from a
# checkout, an editable install or a wheel. The checkout's jobs/ and search_spaces/ hold the examples a user passes
# by path. A pathlib.Path: cmidd is installed as files (a wheel unpacked), never imported from a zip.
JOBS_DIR = Path(str(resources.files("cmidd") / "jobs"))


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


def parse_value(text: str, where: str) -> Any:
    """One ``--set`` value parsed as YAML (``10``, ``1e-3``, ``[a, b]``, ``{x: 1}``, ``null``).

    Raises:
        ConfigError: the value is not valid YAML (``[ConvNetD2`` with no closing bracket), naming ``where``.
    """
    if not text.strip():
        return None
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{where}: must be at most {MAX_BYTES // 1024} KiB, but has {len(text) // 1024} KiB")
    try:
        _check_shape(text, where)
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: must be a YAML value, but {text!r} is not: {_yaml_problem(e)}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed with ``yaml.safe_load``) to a copy of ``raw``.

    Unknown paths are caught by validation (``extra="forbid"``); a malformed override raises here.

    Raises:
        ConfigError: one line naming ``source``, ``--set`` and the field: no ``=``, an empty key or part, a value
            that is not YAML, a path through a value.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p.strip() for p in key.split(".")):
            raise ConfigError(f"{source}: --set: must be key.path=value, got {item!r}")
        where = f"{source}: --set {key}" if source != "--set" else f"--set {key}"
        _assign(out, key, parse_value(value, where), source)
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

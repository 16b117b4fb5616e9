"""The base of every config model, and the validated name types shared by the job and search schemas.

A plug-in name (net, data set, method, proxy set, CMI aggregator) is checked against its registry, the one
source of allowed values, through ``catalog.catalog()``; a DSA strategy against ``augment.parse_strategy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Strict

from ..errors import ConfigError, UnknownNameError

Device = Literal["cpu", "cuda", "auto"]
DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"
DsaMode = Literal["single", "multi"]  # single: one op group per call (reference DSA); multi: every op


# Strict scalars: YAML ``true`` is not the int 1, ``"10"`` is not 10 and 2.0 is not an int; an int is a float
# (``lr_img: 1``) but a bool is not. Every float of a config is also finite (``allow_inf_nan=False`` on ``Cfg``).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]

# Every number of a config has a declared range (tests/test_config.py checks that each Int/Float field has an upper
# bound): a seed of 2**70 or an lr_img of 1e308 is refused at load, not as a traceback deep in torch.
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both take it
MAX_COUNT = 10**7  # iterations, epochs, steps between events
MAX_BATCH = 10**6  # images per batch, per class
MAX_LR = 1e6  # image learning rates (MTT uses up to 1e4); net learning rates are bounded lower, per field
MAX_WIDTH = 4096  # net.width: channels of a ConvNet layer (default 128)


class Cfg(BaseModel):
    """Frozen, unknown keys are errors, floats are finite (no ``.inf`` / ``.nan``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _registered(kind: str) -> AfterValidator:
    """A validator that accepts a name registered in ``catalog()[kind]`` (the error lists the choices)."""

    def check(value: str) -> str:
        from ..catalog import catalog

        try:
            catalog()[kind].get(value)
        except UnknownNameError as e:
            raise ValueError(str(e)) from None
        return value

    return AfterValidator(check)


def _strategy(value: str) -> str:
    from ..augment import parse_strategy

    try:
        parse_strategy(value)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return value


NetName = Annotated[str, _registered("nets")]
DatasetName = Annotated[str, _registered("datasets")]
MethodName = Annotated[str, _registered("methods")]
ProxySetName = Annotated[str, _registered("proxy-sets")]
AggName = Annotated[str, _registered("cmi-aggs")]
DsaStrategy = Annotated[str, AfterValidator(_strategy)]


# A path longer than this (or with a part longer than NAME_MAX) is refused at validation: the OS would refuse it
# later, after the job started (ENAMETOOLONG as a traceback).
MAX_PATH_CHARS, MAX_PART_CHARS = 1024, 255


def _user_path(value: object) -> object:
    """A path as the user wrote it, ``~`` expanded; empty text, a filesystem root and over-long paths refused."""
    if isinstance(value, (str, Path)):
        text = str(value)
        if not text.strip():
            raise ValueError("must be a path, but it is empty (it would mean the working folder)")
        if len(text) > MAX_PATH_CHARS:
            raise ValueError(f"must be at most {MAX_PATH_CHARS} characters, but has {len(text)}")
        long = next((p for p in Path(text).parts if len(p.encode()) > MAX_PART_CHARS), None)
        if long is not None:
            raise ValueError(f"each part must be at most {MAX_PART_CHARS} bytes, but {long[:40]!r}... has "
                             f"{len(long.encode())}")
        path = Path(text).expanduser()
        if path.resolve() == Path(path.resolve().anchor):
            raise ValueError("must not be a filesystem root")
        return path
    return value


def _folder(value: Path) -> Path:
    """A path that is (or will be made) a folder: neither it nor a parent may be an existing file."""
    for p in (value, *value.parents):
        if p.exists() and not p.is_dir():
            what = "it is a file" if p == value else f"{str(p)!r} is a file"
            raise ValueError(f"must be a folder, but {what}")
    return value


UserPath = Annotated[Path, BeforeValidator(_user_path)]  # data.root, synset, sets: ~ expanded, checked
Folder = Annotated[Path, BeforeValidator(_user_path), AfterValidator(_folder)]  # output.dir, proxies.dir, ...

"""The base of every config model, and the validated name types shared by the job and search schemas.

A plug-in name (net, data set, method, proxy set, CMI aggregator) is checked against its registry, the one
source of allowed values, through ``catalog.catalog()``; a DSA strategy against ``augment.parse_strategy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Strict

from ..errors import ConfigError, UnknownNameError

Device = Literal["cpu", "cuda", "auto"]
DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"
DsaMode = Literal["single", "multi"]  # single: one op group per call (reference DSA); multi: every op


# Strict scalars: YAML ``true`` is not the int 1, ``"10"`` is not 10 and 2.0 is not an int; an int is a float
# (``lr_img: 1``) but a bool is not. Every float of a config is also finite (``allow_inf_nan=False`` on ``Cfg``).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]


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


def _folder(value: Path) -> Path:
    """A path that is (or will be made) a folder: neither it nor a parent may be an existing file."""
    for p in (value, *value.parents):
        if p.exists() and not p.is_dir():
            what = "it is a file" if p == value else f"{str(p)!r} is a file"
            raise ValueError(f"must be a folder, but {what}")
    return value


Folder = Annotated[Path, AfterValidator(_folder)]  # output.dir, proxies.dir, experts.dir, a search's storage

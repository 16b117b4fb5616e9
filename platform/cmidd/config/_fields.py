"""The base of every config model, and the validated name types shared by the job and search schemas.

A plug-in name (net, data set, method, proxy set, CMI aggregator) is checked against its registry, the one
source of allowed values, through ``catalog.catalog()``; a DSA strategy against ``augment.parse_strategy``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

from ..errors import ConfigError, UnknownNameError

Device = Literal["cpu", "cuda", "auto"]
DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"
DsaMode = Literal["single", "multi"]  # single: one op group per call (reference DSA); multi: every op


class Cfg(BaseModel):
    """Frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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

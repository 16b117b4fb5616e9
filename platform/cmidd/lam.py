"""The effective lambda: the one place that says which CMI weight a job or a search trial really used.

A job weighs CMI by ``cmi.lam`` (absolute) or ``cmi.alpha`` (scale-free; the loop turns it into a lambda at
initialization, ``cmidd.distill.effective_lambda``). What ran is reported as the metric ``cmi.lam_effective``
(``LAM_KEY``: result.json, MLflow metric and param, registry version tag). Every table, param, tag and plot
reads it through ``lam_effective`` and prints it with ``fmt_lam`` (3 significant digits).

Example:
    >>> lam_effective(0.0, alpha=0.05, measured=1234.5678)
    1234.5678
    >>> lam_effective(10.0, cmi_on=False)  # a search trial of the lambda = 0 arm
    0.0
    >>> fmt_lam(1234.5678)
    '1.23e+03'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

LAM_KEY = "cmi.lam_effective"  # metric (result.json, MLflow), param and registry tag
RATIO_KEY = "cmi_ratio"  # CMI(S) / CMI(random-real set of the same IPC) under the same proxies


def _num(v: Any) -> float | None:
    """``v`` as a float (MLflow params are strings), None when absent, empty or not a number."""
    if v is None or v == "" or v == "-":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def lam_effective(lam: Any = 0.0, alpha: Any = 0.0, measured: Any = None, cmi_on: bool = True) -> float:
    """The lambda a job or trial really used.

    Args:
        lam: its ``cmi.lam`` (a number or an MLflow param string).
        alpha: its ``cmi.alpha``.
        measured: the ``cmi.lam_effective`` it reported (result metrics, a Tune report), if any.
        cmi_on: False for a search trial of the lambda = 0 arm (``cmi_on: false``).

    Returns:
        0.0 when CMI was off (``cmi_on`` false, or lam and alpha both 0); else the measured value when reported
        (it also says 0 where CMI vanished, e.g. at IPC 1); else ``lam`` when set; else NaN (an alpha job that
        reported nothing yet: its lambda is not known).
    """
    lam_v, alpha_v, meas = _num(lam) or 0.0, _num(alpha) or 0.0, _num(measured)
    if not cmi_on or (lam_v <= 0 and alpha_v <= 0):
        return 0.0
    if meas is not None:
        return meas
    return lam_v if lam_v > 0 else math.nan


def lam_of(params: Mapping[str, Any], metrics: Mapping[str, Any] | None = None,
           base: Mapping[str, Any] | None = None) -> float:
    """``lam_effective`` from flat ``params`` (``cmi.lam``, ``cmi.alpha``, and ``cmi_on`` for a search trial),
    ``metrics`` (``cmi.lam_effective`` when reported) and ``base`` (the values a trial did not search)."""
    base = base or {}

    def get(key: str) -> Any:
        return params[key] if key in params else base.get(key)

    on = params.get("cmi_on", True)
    on = on if isinstance(on, bool) else str(on).lower() != "false"
    return lam_effective(get("cmi.lam"), get("cmi.alpha"), (metrics or {}).get(LAM_KEY), cmi_on=on)


def fmt_lam(x: float | None) -> str:
    """A lambda for tables: ``0``, 3 significant digits, or ``-`` when unknown."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return "0" if x == 0 else f"{x:.3g}"

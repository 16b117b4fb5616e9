"""The CMI weight (lambda): the one module that owns its rules.

A job weighs CMI by ``cmi.lam`` (absolute) or ``cmi.alpha`` (scale-free). This module says
- which lambda the loop uses: ``effective_lambda`` (``cmi.lam``, or ``alpha * g_DD / g_CMI`` calibrated on the
  initial images by ``gradient_norms``) and, along the run, ``maybe_recalibrate`` (``cmi.recalibrate_every``,
  ``cmi.measure_every``);
- which lambda a finished job or search trial used: it is reported as the metric ``cmi.lam_effective``
  (``LAM_KEY``: result.json, MLflow metric and param, registry version tag); every table, param, tag and plot
  reads it through ``lam_effective`` (``lam_of`` for flat params) and prints it with ``fmt_lam``;
- what a set is called: ``set_label`` (``dm`` or ``dm+cmi``), from a job or a run's flat params.
No other module computes a weight, a realised alpha or a label (tests/test_lam_owner.py).

Example:
    >>> lam_effective(0.0, alpha=0.05, measured=1234.5678)
    1234.5678
    >>> lam_effective(10.0, cmi_on=False)  # a search trial of the lambda = 0 arm
    0.0
    >>> fmt_lam(1234.5678)
    '1.23e+03'
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .data import Dataset
from .distill_state import RunState, iteration_generator, setup_run
from .errors import ConfigError
from .formation import decode
from .hooks import Hooks

if TYPE_CHECKING:
    from .config import DistillJob

log = logging.getLogger(__name__)

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


# -- the label: the one rule for a set's name in tables, answers and plots (the runner names a job's set by it,
#    the registry's answers a run's from its flat params, so the two never disagree) ----------------------------
CMI_SUFFIX = "+cmi"


def weight_on(lam: Any = 0.0, alpha: Any = 0.0, cmi_on: Any = True) -> bool:
    """Whether CMI weighed a set: ``cmi.lam`` or ``cmi.alpha`` > 0 (config values or MLflow param strings), and
    not a search trial of the lambda = 0 arm (``cmi_on`` false)."""
    on = cmi_on if isinstance(cmi_on, bool) else str(cmi_on).lower() != "false"
    return on and ((_num(lam) or 0.0) > 0 or (_num(alpha) or 0.0) > 0)


def set_label(method: str, lam: object = 0.0, alpha: object = 0.0, cmi_on: object = True) -> str:
    """``<method>`` or ``<method>+cmi``: ``+cmi`` when CMI weighed the set (``weight_on``).

    Example:
        >>> set_label("dm", lam=0, alpha=0.05), set_label("dm", lam="10"), set_label("dm", alpha=0.05, cmi_on="False")
        ('dm+cmi', 'dm+cmi', 'dm')
    """
    return method + (CMI_SUFFIX if weight_on(lam, alpha, cmi_on) else "")


def set_label_of_job(job: DistillJob) -> str:
    """``set_label`` of a distill job (``dm`` or ``dm+cmi``)."""
    return set_label(job.method.name, job.cmi.lam, job.cmi.alpha)


def set_label_of_params(params: Mapping[str, str], method: str | None = None) -> str:
    """``set_label`` of a run from its flat params (``method.name``, ``cmi.lam``, ``cmi.alpha``, ``cmi_on``);
    ``method`` (a version's ``method`` tag: an ensemble's) when the run has no ``method.name``; ``-`` without
    either."""
    name = params.get("method.name") or method or "-"
    return set_label(name, params.get("cmi.lam"), params.get("cmi.alpha"), params.get("cmi_on", True))


# -- the calibration: alpha -> lambda at the start, and along the run -------------------------------------------
def lam_from_alpha(alpha: float, g_dd: float, g_cmi: float) -> float:
    """``alpha * g_DD / g_CMI``: the lambda at which CMI pulls the images ``alpha`` times as hard as the DD term."""
    return alpha * g_dd / g_cmi


def realised_alpha(lam: float, g_dd: float, g_cmi: float) -> float:
    """``lam * g_CMI / g_DD``: the alpha a weight ``lam`` amounts to at these gradient norms (inf if g_DD = 0)."""
    return lam * g_cmi / g_dd if g_dd > 0 else math.inf


def effective_lambda(job: DistillJob, data: Dataset, proxies: list[nn.Module] | None) -> float:
    """The CMI weight the loop uses: 0 when CMI is off, ``cmi.lam`` when set, else ``alpha * g_DD / g_CMI``.

    ``g_DD`` and ``g_CMI`` are ``gradient_norms`` over ``cmi.calibrate_draws`` seeded draws at the initial
    images, so CMI pulls the images ``alpha`` times as hard as the DD term at the start. A pure function of the
    job, the data and the proxies (resume recomputes the same value). 0 where CMI vanishes (one image per class).

    Raises:
        ConfigError: alpha > 0 without proxies, or a CMI gradient of 0 (nothing to scale).
    """
    cfg = job.cmi
    if not cfg.on or job.ipc * job.method.factor**2 == 1:
        return 0.0  # off, or CMI identically 0 at one image per class (the loop warns): no weight was applied
    if cfg.lam > 0:
        return float(cfg.lam)
    if not proxies:
        raise ConfigError("cmi.alpha > 0 needs proxies, but none were given")
    g_dd, g_cmi = gradient_norms(job, data, proxies, cfg.calibrate_draws)
    if not g_cmi > 0:
        raise ConfigError(f"cmi.alpha: the CMI gradient is {g_cmi} at the initial images, so lambda = alpha * g_DD / "
                          "g_CMI is undefined; set cmi.lam instead")
    lam = lam_from_alpha(cfg.alpha, g_dd, g_cmi)
    log.info("cmi.alpha %g: g_DD %.4g, g_CMI %.4g over %d draws -> lambda %.4g", cfg.alpha, g_dd, g_cmi,
             cfg.calibrate_draws, lam)
    return lam


def gradient_norms(job: DistillJob, data: Dataset, proxies: list[nn.Module], draws: int = 8) -> tuple[float, float]:
    """Mean image-gradient L2 norms of the DD loss and of the (unweighted) CMI at the job's initial images.

    Draw ``m`` (0 .. ``draws`` - 1) takes iteration ``m``'s net, batches and proxy, as the loop would; the ratio
    ``g_dd / g_cmi`` is the lambda at which both terms pull the images equally hard at the start.
    """
    unit = job.cmi.model_copy(update={"lam": 1.0, "alpha": 0.0})
    run = setup_run(job.model_copy(update={"cmi": unit}), data, proxies, Hooks(), None, None, None, 1.0)
    if run.reg is None:
        raise ConfigError("gradient_norms: CMI is 0 at this IPC (one image per class): there is nothing to balance")
    g_dd, g_cmi = [], []
    for m in range(draws):
        gen = iteration_generator(job.seed, m)
        run.method.begin_iteration(gen)
        dd, cm = norms_here(run, gen)
        g_dd.append(dd)
        g_cmi.append(cm)
    return sum(g_dd) / draws, sum(g_cmi) / draws


def norms_here(run: RunState, gen: torch.Generator) -> tuple[float, float]:
    """Image-gradient norms of the DD loss (the method's current net) and of the CMI at the current images, as
    the loop's image steps apply them: one step on both terms (``norms_whole``), or, for a class-by-class method
    (IDC), one step per class on class c's DD term and class c's own CMI (``norms_by_class``)."""
    return (norms_by_class if run.method.class_by_class else norms_whole)(run, gen)


def norms_whole(run: RunState, gen: torch.Generator) -> tuple[float, float]:
    """Norms of the gradients of the whole DD loss and of the whole set's CMI (the mean KL over all images)."""
    x, y = decode(run.syn, run.labels, run.job.method.factor)
    (grad,) = torch.autograd.grad(run.method.loss(x, y, gen), run.syn)
    g_dd = float(grad.norm())
    (grad,) = torch.autograd.grad(run.reg(x, y, gen), run.syn)
    return g_dd, float(grad.norm())


def norms_by_class(run: RunState, gen: torch.Generator) -> tuple[float, float]:
    """The root of the summed squared norms, over the classes in order, of the gradients of class c's DD term
    and of class c's CMI alone (its mean KL to its own centroid), each drawn from ``gen`` as the loop's class
    steps draw them, at the same images.

    Class c's CMI is C times its share of the whole set's (a mean over its ipc images instead of over all C x ipc),
    so a lambda balanced on the whole-set norms (``norms_whole``) pulled each class step about C times harder
    than alpha says (measured on digits in docs/cmi.md); balanced on these, alpha means the same for IDC as for
    DM."""
    x, y = decode(run.syn, run.labels, run.job.method.factor)
    dd2 = cmi2 = 0.0
    for c in range(run.data.num_classes):
        (grad,) = torch.autograd.grad(run.method.loss(x, y, gen, [c]), run.syn)
        dd2 += float(grad.norm()) ** 2
        (grad,) = torch.autograd.grad(run.reg(x[y == c], y[y == c], gen, groups=1), run.syn)
        cmi2 += float(grad.norm()) ** 2
    return math.sqrt(dd2), math.sqrt(cmi2)


RECAL_STREAM = 1 << 40  # recalibration draws come from iteration_generator(seed, RECAL_STREAM + it): the step's own
#                         generator is left untouched


MEASURED = ("cmi.g_dd", "cmi.g_cmi", "cmi.alpha_realised")  # the step metrics of a measurement (History.calib)


def maybe_recalibrate(run: RunState, it: int) -> dict[str, float]:
    """Every ``cmi.recalibrate_every`` iterations (not at 0, where the start's calibration holds): measure
    ``g_DD / g_CMI`` at the current images with this iteration's net and a batch and proxy of its own generator,
    then ``lam <- ema * lam + (1 - ema) * alpha * ratio``. A pure function of (seed, it, images, lam): the
    checkpoint's lam makes resume exact.

    Every ``cmi.measure_every`` iterations (from 0) the same measurement, without changing lam. Each measurement
    (either kind, one per iteration at most) is appended to ``History.calib`` with the realised alpha
    ``lam * g_CMI / g_DD`` (lam: the weight this iteration's update uses) and returned as step metrics
    (``MEASURED``); {} when nothing was measured."""
    cfg = run.job.cmi
    recal = bool(cfg.recalibrate_every) and it > 0 and it % cfg.recalibrate_every == 0
    measure = bool(cfg.measure_every) and it % cfg.measure_every == 0
    if not (recal or measure) or run.reg is None or run.lam == 0:
        return {}
    g_dd, g_cmi = norms_here(run, iteration_generator(run.job.seed, RECAL_STREAM + it))
    if recal and g_cmi > 0:
        run.lam = cfg.recalibrate_ema * run.lam + (1 - cfg.recalibrate_ema) * lam_from_alpha(cfg.alpha, g_dd, g_cmi)
    realised = realised_alpha(run.lam, g_dd, g_cmi)
    run.history.calib.append({"step": it, "g_dd": g_dd, "g_cmi": g_cmi, "lam": run.lam, "alpha_realised": realised})
    log.info("cmi at iteration %d: g_DD %.4g, g_CMI %.4g, lambda %.4g -> realised alpha %.4g%s", it, g_dd, g_cmi,
             run.lam, realised, " (recalibrated)" if recal else "")
    return dict(zip(MEASURED, (g_dd, g_cmi, realised)))

"""THE distillation loop: a ``DistillJob`` + data (+ proxies) -> ``SyntheticSet`` + ``History``.

Per iteration: the method draws what it needs (a fresh net, real batches) from a generator seeded by
(job seed, iteration); for each of its steps the images take one SGD step on ``L_DD + lam * CMI``. All
randomness is derived from the seed and the iteration, so a resumed run equals an uninterrupted one.

Tracking, Tune reports and early stopping are ``Hooks``, never a second loop.

Example:
    >>> job = load_job("jobs/distill_dm_digits_ipc10.yaml")
    >>> data = load_dataset("digits")
    >>> synset, history = distill(job, data)
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .checkpoint import CHECKPOINT, load_checkpoint, resume_key, save_checkpoint
from .cmi import CMIRegularizer
from .data import Dataset, RealPool
from .errors import ConfigError, DivergenceError
from .evaluate import evaluate
from .formation import check_factor, decode, init_stored
from .lam import LAM_KEY
from .methods import Method, MethodContext, build_method
from .progress import Progress
from .device import resolve_device
from .hooks import Hooks
from .shard import Shard
from .synthetic import SyntheticSet

if TYPE_CHECKING:
    from .config import CMICfg, DistillJob

log = logging.getLogger(__name__)

@dataclass
class History:
    """Per-iteration curves and intermediate evaluations."""

    step: list[int] = field(default_factory=list)
    loss_dd: list[float] = field(default_factory=list)
    cmi: list[float] = field(default_factory=list)  # NaN where CMI was not computed
    loss_total: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)  # each with its "step"
    # CMI's pull along the run (cmi.measure_every / recalibrate_every): {"step", "g_dd", "g_cmi", "lam",
    # "alpha_realised"} measured at the images before iteration "step"'s update, "lam" the weight that update used
    calib: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def append(self, step: int, m: dict[str, float]) -> None:
        self.step.append(step)
        self.loss_dd.append(m["loss_dd"])
        self.cmi.append(m.get("cmi", math.nan))
        self.loss_total.append(m["loss_total"])


def iteration_generator(seed: int, it: int) -> torch.Generator:
    """The CPU generator of iteration ``it``: a pure function of (seed, it), which makes resume exact."""
    return torch.Generator().manual_seed((seed * 1_000_003 + it) % (2**63 - 1))


def build_cmi(cfg: CMICfg, proxies: list[nn.Module] | None, num_classes: int) -> CMIRegularizer | None:
    """The regularizer, or None when CMI is off (``lam == alpha == 0``; then no proxy forward ever runs)."""
    if not cfg.on:
        return None
    if not proxies:
        raise ConfigError("cmi.lam > 0 or cmi.alpha > 0 needs proxies, but none were given")
    return CMIRegularizer(proxies, num_classes, cfg.agg, cfg.k, cfg.space, cfg.temperature, cfg.subsample,
                          cfg.precision)


@dataclass
class _Run:
    """What one distillation holds while it runs (built by ``_setup``, advanced by the loop)."""

    job: DistillJob
    data: Dataset
    device: torch.device
    syn: torch.Tensor  # the stored images (factor x factor tiles each with multi-formation), requires grad
    labels: torch.Tensor
    opt: torch.optim.Optimizer
    method: Method
    reg: CMIRegularizer | None
    lam: float  # the CMI weight the steps use (cmi.lam, or alpha's calibrated lambda; restored on resume)
    hooks: Hooks
    shard: Shard | None
    ckpt: Path | None
    history: History = field(default_factory=History)
    start: int = 0

    @property
    def classes(self) -> list[int] | None:
        """This worker's share of the DD term's classes (None = all)."""
        return self.shard.classes(self.data.num_classes) if self.shard is not None else None


def distill(
    job: DistillJob,
    data: Dataset,
    proxies: list[nn.Module] | None = None,
    hooks: Hooks | None = None,
    workdir: Path | None = None,
    resume: bool = False,
    shard: Shard | None = None,
    experts: list[torch.Tensor] | None = None,
    lam: float | None = None,
) -> tuple[SyntheticSet, History]:
    """Distil ``job.ipc`` images per class from ``data``.

    Args:
        job: validated distill job.
        data: the real data set (train split used for matching, test split for intermediate evals).
        proxies: frozen proxy nets, kept in memory; required when ``job.cmi.lam > 0`` or ``alpha > 0``.
        hooks: callbacks (logging, reporting, stopping).
        workdir: where checkpoints go (``job.output.checkpoint_every``); None = no checkpoints.
        resume: continue from ``workdir/checkpoint.pt`` if it exists.
        shard: this worker's part of a data-parallel run (``cmidd.ray.train``); None = the whole job here.
            ``proxies`` then has one entry per proxy of the set, None for those another worker holds.
        experts: expert trajectories (method ``mtt``), see ``cmidd.experts``.
        lam: the CMI weight, as ``effective_lambda(job, data, proxies)`` returns it (None: computed here; a
            data-parallel worker, which holds only some proxies, must be given it). A checkpoint's weight wins
            on resume. The set's manifest records it as ``lam``.

    Returns:
        (SyntheticSet, History).

    Raises:
        DivergenceError: the loss became NaN/Inf; the last good checkpoint stays in ``workdir``.
        DataError: ipc larger than a class.
    """
    if lam is None:
        if shard is not None and job.cmi.alpha > 0:
            raise ConfigError("cmi.alpha: a data-parallel worker holds only some proxies; its loop must be given "
                              "the lambda calibrated on all of them (effective_lambda)")
        lam = effective_lambda(job, data, proxies)
    run = _setup(job, data, proxies, hooks or Hooks(), workdir, shard, experts, lam)
    if resume and run.ckpt is not None and run.ckpt.is_file():
        _restore(run)
    t0 = time.perf_counter() - run.history.seconds
    bar = Progress(f"distill {job.method.name}", job.method.iterations, initial=run.start)
    for it in range(run.start, job.method.iterations):
        # -- one iteration: the method draws its net / batches, then steps_per_iteration image updates ------
        gen = iteration_generator(job.seed, it)
        run.method.begin_iteration(gen)
        measured = _maybe_recalibrate(run, it)
        steps = [_image_step(run, it, gen) for _ in range(run.method.steps_per_iteration)]
        # -- record, report, evaluate, checkpoint ---------------------------------------------------------
        step, metrics = it + 1, _mean_metrics(steps) | measured
        if job.cmi.recalibrate_every and run.reg is not None:
            metrics[LAM_KEY] = run.lam  # its curve (MLflow); the final value is the result's
        run.history.append(step, metrics)
        run.hooks.on_step(step, metrics)
        _log_progress(run, bar, step, metrics, time.perf_counter() - t0)
        _evaluate_and_checkpoint(run, step, t0)
        if run.hooks.should_stop():
            log.info("stopped early at iteration %d", step)
            break
    bar.close()
    run.history.seconds = time.perf_counter() - t0
    return _synset(job, data, run.syn, run.labels, run.lam), run.history


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
    lam = cfg.alpha * g_dd / g_cmi
    log.info("cmi.alpha %g: g_DD %.4g, g_CMI %.4g over %d draws -> lambda %.4g", cfg.alpha, g_dd, g_cmi,
             cfg.calibrate_draws, lam)
    return lam


def gradient_norms(job: DistillJob, data: Dataset, proxies: list[nn.Module], draws: int = 8) -> tuple[float, float]:
    """Mean image-gradient L2 norms of the DD loss and of the (unweighted) CMI at the job's initial images.

    Draw ``m`` (0 .. ``draws`` - 1) takes iteration ``m``'s net, batches and proxy, as the loop would; the ratio
    ``g_dd / g_cmi`` is the lambda at which both terms pull the images equally hard at the start.
    """
    unit = job.cmi.model_copy(update={"lam": 1.0, "alpha": 0.0})
    run = _setup(job.model_copy(update={"cmi": unit}), data, proxies, Hooks(), None, None, None, 1.0)
    if run.reg is None:
        raise ConfigError("gradient_norms: CMI is 0 at this IPC (one image per class): there is nothing to balance")
    g_dd, g_cmi = [], []
    for m in range(draws):
        gen = iteration_generator(job.seed, m)
        run.method.begin_iteration(gen)
        dd, cm = _norms_here(run, gen)
        g_dd.append(dd)
        g_cmi.append(cm)
    return sum(g_dd) / draws, sum(g_cmi) / draws


def _norms_here(run: _Run, gen: torch.Generator) -> tuple[float, float]:
    """Image-gradient norms of the DD loss (the method's current net) and of the CMI at the current images, as
    the loop's image steps apply them: one step on both terms (``_norms_whole``), or, for a class-by-class method
    (IDC), one step per class on class c's DD term and class c's own CMI (``_norms_by_class``)."""
    return (_norms_by_class if run.method.class_by_class else _norms_whole)(run, gen)


def _norms_whole(run: _Run, gen: torch.Generator) -> tuple[float, float]:
    """Norms of the gradients of the whole DD loss and of the whole set's CMI (the mean KL over all images)."""
    x, y = decode(run.syn, run.labels, run.job.method.factor)
    (grad,) = torch.autograd.grad(run.method.loss(x, y, gen), run.syn)
    g_dd = float(grad.norm())
    (grad,) = torch.autograd.grad(run.reg(x, y, gen), run.syn)
    return g_dd, float(grad.norm())


def _norms_by_class(run: _Run, gen: torch.Generator) -> tuple[float, float]:
    """The root of the summed squared norms, over the classes in order, of the gradients of class c's DD term
    and of class c's CMI alone (its mean KL to its own centroid), each drawn from ``gen`` as the loop's class
    steps draw them, at the same images.

    Class c's CMI is C times its share of the whole set's (a mean over its ipc images instead of over all C x ipc),
    so a lambda balanced on the whole-set norms (``_norms_whole``) pulled each class step about C times harder
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


def _maybe_recalibrate(run: _Run, it: int) -> dict[str, float]:
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
    g_dd, g_cmi = _norms_here(run, iteration_generator(run.job.seed, RECAL_STREAM + it))
    if recal and g_cmi > 0:
        run.lam = cfg.recalibrate_ema * run.lam + (1 - cfg.recalibrate_ema) * cfg.alpha * g_dd / g_cmi
    realised = run.lam * g_cmi / g_dd if g_dd > 0 else math.inf
    run.history.calib.append({"step": it, "g_dd": g_dd, "g_cmi": g_cmi, "lam": run.lam, "alpha_realised": realised})
    log.info("cmi at iteration %d: g_DD %.4g, g_CMI %.4g, lambda %.4g -> realised alpha %.4g%s", it, g_dd, g_cmi,
             run.lam, realised, " (recalibrated)" if recal else "")
    return dict(zip(MEASURED, (g_dd, g_cmi, realised)))


def _setup(job: DistillJob, data: Dataset, proxies: list[nn.Module] | None, hooks: Hooks, workdir: Path | None,
           shard: Shard | None, experts: list[torch.Tensor] | None, lam: float) -> _Run:
    """The initial images (real or noise), their optimizer, the method and the CMI regularizer."""
    device = resolve_device(job.device)
    cfg, c_num = job.method, data.num_classes
    pool = RealPool(data.train_x, data.train_y, c_num, device)
    init_gen = torch.Generator().manual_seed(job.seed)
    check_factor(cfg.factor, data.im_size)
    x0, labels = init_stored(pool, job.ipc, cfg.factor, init_gen)  # also validates ipc <= smallest class
    if cfg.init == "noise":
        x0 = torch.randn(x0.shape, generator=init_gen).to(device)
    syn = x0.detach().clone().contiguous().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum)
    method = build_method(MethodContext(cfg, job.net, pool, data.channels, c_num, data.im_size, device, experts))
    reg = build_cmi(job.cmi, proxies, c_num)
    if reg is not None and job.ipc * cfg.factor**2 == 1:
        warnings.warn("ipc=1: each class's single image is its own centroid, so CMI is 0 and cmi.lam (alpha) has no "
                      "effect", stacklevel=2)
        reg = None
    ckpt = workdir / CHECKPOINT if workdir is not None else None
    return _Run(job, data, device, syn, labels, opt, method, reg, lam, hooks, shard, ckpt)


def _restore(run: _Run) -> None:
    """Continue from the checkpoint: images, image optimizer, the method's own state, history, step."""
    state = load_checkpoint(run.ckpt, run.job, run.device)
    with torch.no_grad():
        run.syn.copy_(state["images"])
    run.opt.load_state_dict(state["opt"])
    run.method.load_state_dict(state.get("method", {}))
    run.history = History(**state["history"])
    run.lam = float(state.get("lam", run.lam))
    run.start = state["step"]
    log.info("resumed from %s at iteration %d", run.ckpt, run.start)


def _image_step(run: _Run, it: int, gen: torch.Generator) -> tuple[float, float | None, float]:
    """One image update on ``L_DD + lam * CMI`` (or, for a class-by-class method, one per class), then the
    method's ``after_update``; returns (loss_dd, cmi or None, total) as floats, summed over the class steps.

    Class by class (IDC's reference ``condense.py``): class c's DD term and the CMI of class c's images alone
    (its mean KL to its own centroid) take one SGD step of the whole image tensor, so the momentum moves the
    other classes' images too, as with the reference's one optimizer over one tensor.

    Raises:
        DivergenceError: the total is NaN/Inf (checked before the step, so the images never take it).
    """
    if run.method.class_by_class:
        steps = [_update(run, it, gen, c) for c in range(run.data.num_classes)]
        cmis = [s[1] for s in steps if s[1] is not None]
        out = (sum(s[0] for s in steps), sum(cmis) if cmis else None, sum(s[2] for s in steps))
    else:
        out = _update(run, it, gen)
    run.method.after_update(*decode(run.syn.detach(), run.labels, run.job.method.factor), gen)
    return out


def _update(run: _Run, it: int, gen: torch.Generator, only: int | None = None) -> tuple[float, float | None, float]:
    """One SGD step of the images on the DD term (of class ``only``, or all) plus ``lam`` x its CMI term."""
    job, syn, labels, factor = run.job, run.syn, run.labels, run.job.method.factor
    x, y = decode(syn, labels, factor)  # multi-formation; the identity for factor 1
    classes = run.classes  # a worker's share (None = all)
    if only is not None:
        classes = [only] if classes is None or only in classes else []
    loss_dd = run.method.loss(x, y, gen, classes)
    total, cmi = loss_dd, None
    if run.reg is not None and it % job.cmi.every == 0:
        xs, ys = (x, y) if only is None else (x[y == only], y[y == only])
        cmi = run.reg(xs, ys, gen, groups=None if only is None else 1)
        total = loss_dd + run.lam * cmi
    run.opt.zero_grad(set_to_none=True)
    if total.requires_grad:
        total.backward()
    else:  # another worker's class and no CMI term: this worker adds nothing to the step
        syn.grad = torch.zeros_like(syn)
    if run.shard is not None:  # this worker's terms -> the whole job's (gradient and metrics)
        loss_dd, cmi_sum, total = run.shard.reduce(syn, loss_dd, cmi if cmi is not None else syn.new_zeros(()),
                                                   total)
        cmi = cmi_sum if cmi is not None else None
    # one device->host read per step for all three scalars (each float() would be a sync of its own)
    zero = total.new_zeros(())
    dd_v, cmi_v, total_v = torch.stack(
        [t.detach().to(torch.float64) for t in (loss_dd, cmi if cmi is not None else zero, total)]
    ).tolist()
    if not math.isfinite(total_v):
        ckpt = run.ckpt
        where = f"the last good checkpoint is {ckpt}" if ckpt and ckpt.is_file() else "no checkpoint yet"
        raise DivergenceError(f"loss became {total_v} at iteration {it + 1} (loss_dd={dd_v}); {where}; "
                              "try a smaller method.lr_img or cmi.lam / cmi.alpha")
    run.opt.step()
    return dd_v, (cmi_v if cmi is not None else None), total_v


def _mean_metrics(steps: list[tuple[float, float | None, float]]) -> dict[str, float]:
    """An iteration's loss_dd and loss_total averaged over its image steps; cmi over the steps that had it."""
    metrics = {"loss_dd": sum(s[0] for s in steps) / len(steps), "loss_total": sum(s[2] for s in steps) / len(steps)}
    cmis = [s[1] for s in steps if s[1] is not None]
    if cmis:
        metrics["cmi"] = sum(cmis) / len(cmis)
    return metrics


def _log_progress(run: _Run, bar: Progress, step: int, metrics: dict[str, float], elapsed: float) -> None:
    """The bar (losses after it, ETA) when shown; else about 20 log lines per run with the losses and s/it."""
    cmi_txt = f" cmi {metrics['cmi']:.4f}" if "cmi" in metrics else ""
    if bar.active:
        bar.update(step, note=f"loss_dd {metrics['loss_dd']:.4f}{cmi_txt}")
        return
    iterations = run.job.method.iterations
    if step % max(1, iterations // 20) and step != iterations:
        return
    rate = elapsed / max(1, step - run.start)
    log.info("it %d/%d loss_dd %.4f%s (%.3f s/it)", step, iterations, metrics["loss_dd"], cmi_txt, rate)


def _evaluate_and_checkpoint(run: _Run, step: int, t0: float) -> None:
    """An intermediate evaluation every ``eval.every`` steps (main worker), a checkpoint every ``checkpoint_every``."""
    job, main = run.job, run.shard is None or run.shard.main
    syn, labels = run.syn, run.labels
    due = (job.eval.every and step % job.eval.every == 0) or step in job.eval.at
    if main and due and step < job.method.iterations:
        res = evaluate(*decode(syn.detach(), labels, job.method.factor), run.data, job.eval, job.seed, run.device)
        metrics = res.metrics() | ({LAM_KEY: run.lam} if job.cmi.on else {})  # a stopped trial's lambda, too
        run.hooks.on_eval(step, metrics)
        run.history.evals.append({"step": step, **metrics})
    if run.ckpt is not None and job.output.checkpoint_every and step % job.output.checkpoint_every == 0:
        run.history.seconds = time.perf_counter() - t0  # the clock resumes from here
        save_checkpoint(run.ckpt, syn, run.opt, step, asdict(run.history), resume_key(job), run.method, run.lam)
        run.hooks.on_checkpoint(step, run.ckpt, _synset(job, run.data, syn, labels, run.lam))


def _synset(job: DistillJob, data: Dataset, syn: torch.Tensor, labels: torch.Tensor, lam: float) -> SyntheticSet:
    meta = {
        "dataset": data.name, "num_classes": data.num_classes, "ipc": job.ipc, "channels": data.channels,
        "im_size": data.im_size, "mean": list(data.mean), "std": list(data.std),
        "class_names": list(data.class_names), "method": job.method.name, "lam": lam, "alpha": job.cmi.alpha,
        "proxies": job.proxies.set if job.cmi.on else None, "seed": job.seed, "factor": job.method.factor,
        "config": job.model_dump(mode="json"),
    }
    return SyntheticSet(syn.detach().cpu().clone(), labels.detach().cpu().clone(), meta)

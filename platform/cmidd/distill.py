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
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .checkpoint import CHECKPOINT, load_checkpoint, resume_key, save_checkpoint
from .data import Dataset
from .distill_state import History, RunState, iteration_generator, setup_run
from .errors import ConfigError, DivergenceError
from .evaluate import evaluate
from .formation import decode
from .hooks import Hooks
from .lam import LAM_KEY, effective_lambda, maybe_recalibrate
from .progress import Progress
from .shard import Shard
from .synthetic import SyntheticSet

if TYPE_CHECKING:
    from .config import DistillJob

# the loop's public names: callers take its checkpoint file name, History and Hooks from here
__all__ = ["CHECKPOINT", "History", "Hooks", "distill", "effective_lambda", "iteration_generator"]

log = logging.getLogger(__name__)


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
    run = setup_run(job, data, proxies, hooks or Hooks(), workdir, shard, experts, lam)
    if resume and run.ckpt is not None and run.ckpt.is_file():
        _restore(run)
    t0 = time.perf_counter() - run.history.seconds
    bar = Progress(f"distill {job.method.name}", job.method.iterations, initial=run.start)
    for it in range(run.start, job.method.iterations):
        # -- one iteration: the method draws its net / batches, then steps_per_iteration image updates ------
        gen = iteration_generator(job.seed, it)
        run.method.begin_iteration(gen)
        measured = maybe_recalibrate(run, it)
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


def _restore(run: RunState) -> None:
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


def _image_step(run: RunState, it: int, gen: torch.Generator) -> tuple[float, float | None, float]:
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


def _update(run: RunState, it: int, gen: torch.Generator, only: int | None = None) -> tuple[float, float | None, float]:
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


def _log_progress(run: RunState, bar: Progress, step: int, metrics: dict[str, float], elapsed: float) -> None:
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


def _evaluate_and_checkpoint(run: RunState, step: int, t0: float) -> None:
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

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

import hashlib
import io
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from .cmi import CMIRegularizer, cmi_emp, proxy_log_probs
from .data import Dataset, RealPool
from .errors import ConfigError, DivergenceError, IntegrityError
from .evaluate import evaluate
from .formation import check_factor, decode, init_stored
from .methods import Method, MethodContext, build_method
from .progress import format_seconds
from .synthetic import SyntheticSet, atomic_write

if TYPE_CHECKING:
    from .config import CMICfg, DistillJob

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


class Hooks:
    """No-op callbacks of the loop; MLflow logging, Tune reports and stopping rules override them."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """After each iteration (``step`` counts from 1) with loss_dd, cmi (if computed), loss_total."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """After an intermediate evaluation (``eval.every``), with acc/<arch>, acc/cross_arch_mean."""

    def on_checkpoint(self, step: int, path: Path, synset: SyntheticSet) -> None:
        """After a checkpoint was written to ``path``."""

    def should_stop(self) -> bool:
        """True to end the loop early (after the current iteration)."""
        return False


class StepClock(Hooks):
    """``time.perf_counter()`` at the end of each step, in ``stamps`` (benchmarks time segments of steps).

    The plain loop calls ``on_step`` as the step ends; the Ray Train loop calls its hooks later, on the driver,
    so it stamps a ``StepClock`` with rank 0's own clock at the step's end instead (``stamp``).

    Args:
        start: also stamp the clock now, so that ``stamps[i + 1] - stamps[i]`` is step ``i + 1``'s time.
    """

    def __init__(self, start: bool = False) -> None:
        self.stamps: list[float] = [time.perf_counter()] if start else []

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.stamp(time.perf_counter())

    def stamp(self, at: float) -> None:
        """Record that a step ended at ``at`` (a ``time.perf_counter()`` value)."""
        self.stamps.append(at)


@dataclass
class History:
    """Per-iteration curves and intermediate evaluations."""

    step: list[int] = field(default_factory=list)
    loss_dd: list[float] = field(default_factory=list)
    cmi: list[float] = field(default_factory=list)  # NaN where CMI was not computed
    loss_total: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)  # each with its "step"
    seconds: float = 0.0

    def append(self, step: int, m: dict[str, float]) -> None:
        self.step.append(step)
        self.loss_dd.append(m["loss_dd"])
        self.cmi.append(m.get("cmi", math.nan))
        self.loss_total.append(m["loss_total"])


@dataclass(frozen=True)
class Shard:
    """This process's part of a data-parallel distillation (``cmidd.ray.train`` builds one per Ray worker).

    Every worker holds the full synthetic set and draws the same random numbers; worker ``rank`` computes the
    DD term on classes ``rank, rank + world, ...`` and the CMI term on the proxies it holds, weighted so that
    the SUM over workers of the image gradients is the single-process gradient of ``L_DD + lam * CMI``.
    ``all_reduce`` sums a tensor in place over the workers; all then take the identical SGD step.
    """

    rank: int
    world: int
    all_reduce: Callable[[torch.Tensor], None]

    @property
    def main(self) -> bool:
        """Rank 0 evaluates and reports; the others only compute."""
        return self.rank == 0

    def classes(self, num_classes: int) -> list[int] | None:
        """The classes of this worker's DD term (None = all, the single-process case)."""
        return None if self.world == 1 else list(range(self.rank, num_classes, self.world))

    def reduce(self, syn: torch.Tensor, *scalars: torch.Tensor) -> list[torch.Tensor]:
        """Sum ``syn.grad`` and the metric scalars over the workers in one collective; returns the sums."""
        if self.world == 1:
            return list(scalars)
        n = syn.numel()
        flat = torch.cat([syn.grad.reshape(-1), torch.stack([s.detach().to(syn.grad.dtype) for s in scalars])])
        self.all_reduce(flat)
        syn.grad.copy_(flat[:n].view_as(syn))
        return list(flat[n:].unbind())


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' needs a CUDA GPU, and none is available (got 'cuda'); use cpu or auto")
    return torch.device(name)


def iteration_generator(seed: int, it: int) -> torch.Generator:
    """The CPU generator of iteration ``it``: a pure function of (seed, it), which makes resume exact."""
    return torch.Generator().manual_seed((seed * 1_000_003 + it) % (2**63 - 1))


def build_cmi(cfg: CMICfg, proxies: list[nn.Module] | None, num_classes: int) -> CMIRegularizer | None:
    """The regularizer, or None when ``lam == 0`` (then no proxy forward ever runs)."""
    if cfg.lam == 0:
        return None
    if not proxies:
        raise ConfigError("cmi.lam > 0 needs proxies, but none were given")
    return CMIRegularizer(proxies, num_classes, cfg.agg, cfg.k, cfg.space, cfg.temperature, cfg.subsample,
                          cfg.precision)


@torch.no_grad()
def measure_cmi(synset_images, labels, proxies: list[nn.Module], num_classes: int, cfg: CMICfg) -> float:
    """CMI of a set averaged over *all* proxies (a measurement, not the training aggregation), computed on the
    proxies' device (the set may be anywhere)."""
    device = next(proxies[0].parameters()).device
    synset_images, labels = synset_images.to(device), labels.to(device)
    vals = [
        float(cmi_emp(proxy_log_probs(p, synset_images, cfg.space, cfg.temperature), labels, num_classes))
        for p in proxies
    ]
    return sum(vals) / len(vals)


def _resume_key(job: DistillJob) -> dict:
    """The config fields a checkpoint must agree with to be resumed."""
    d = job.model_dump(mode="json")
    return {k: d[k] for k in ("seed", "ipc", "data", "net", "method", "cmi", "proxies", "experts")}


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
) -> tuple[SyntheticSet, History]:
    """Distil ``job.ipc`` images per class from ``data``.

    Args:
        job: validated distill job.
        data: the real data set (train split used for matching, test split for intermediate evals).
        proxies: frozen proxy nets, kept in memory; required when ``job.cmi.lam > 0``.
        hooks: callbacks (logging, reporting, stopping).
        workdir: where checkpoints go (``job.output.checkpoint_every``); None = no checkpoints.
        resume: continue from ``workdir/checkpoint.pt`` if it exists.
        shard: this worker's part of a data-parallel run (``cmidd.ray.train``); None = the whole job here.
            ``proxies`` then has one entry per proxy of the set, None for those another worker holds.
        experts: expert trajectories (method ``mtt``), see ``cmidd.experts``.

    Returns:
        (SyntheticSet, History).

    Raises:
        DivergenceError: the loss became NaN/Inf; the last good checkpoint stays in ``workdir``.
        DataError: ipc larger than a class.
    """
    run = _setup(job, data, proxies, hooks or Hooks(), workdir, shard, experts)
    if resume and run.ckpt is not None and run.ckpt.is_file():
        _restore(run)
    t0 = time.perf_counter() - run.history.seconds
    for it in range(run.start, job.method.iterations):
        # -- one iteration: the method draws its net / batches, then steps_per_iteration image updates ------
        gen = iteration_generator(job.seed, it)
        run.method.begin_iteration(gen)
        steps = [_image_step(run, it, gen) for _ in range(run.method.steps_per_iteration)]
        # -- record, report, evaluate, checkpoint ---------------------------------------------------------
        step, metrics = it + 1, _mean_metrics(steps)
        run.history.append(step, metrics)
        run.hooks.on_step(step, metrics)
        _log_progress(run, step, metrics, time.perf_counter() - t0)
        _evaluate_and_checkpoint(run, step, t0)
        if run.hooks.should_stop():
            log.info("stopped early at iteration %d", step)
            break
    run.history.seconds = time.perf_counter() - t0
    return _synset(job, data, run.syn, run.labels), run.history


def gradient_norms(job: DistillJob, data: Dataset, proxies: list[nn.Module], draws: int = 8) -> tuple[float, float]:
    """Mean image-gradient L2 norms of the DD loss and of the (unweighted) CMI at the job's initial images.

    Draw ``m`` (0 .. ``draws`` - 1) takes iteration ``m``'s net, batches and proxy, as the loop would; the ratio
    ``g_dd / g_cmi`` is the lambda at which both terms pull the images equally hard at the start.
    """
    run = _setup(job.model_copy(update={"cmi": job.cmi.model_copy(update={"lam": 1.0})}), data, proxies, Hooks(),
                 None, None, None)
    if run.reg is None:
        raise ConfigError("gradient_norms: CMI is 0 at this IPC (one image per class): there is nothing to balance")
    g_dd, g_cmi = [], []
    for m in range(draws):
        gen = iteration_generator(job.seed, m)
        run.method.begin_iteration(gen)
        x, y = decode(run.syn, run.labels, job.method.factor)
        (grad,) = torch.autograd.grad(run.method.loss(x, y, gen), run.syn)
        g_dd.append(float(grad.norm()))
        (grad,) = torch.autograd.grad(run.reg(x, y, gen), run.syn)
        g_cmi.append(float(grad.norm()))
    return sum(g_dd) / draws, sum(g_cmi) / draws


def _setup(job: DistillJob, data: Dataset, proxies: list[nn.Module] | None, hooks: Hooks, workdir: Path | None,
           shard: Shard | None, experts: list[torch.Tensor] | None) -> _Run:
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
        warnings.warn("ipc=1: each class's single image is its own centroid, so CMI is 0 and cmi.lam has no effect")
        reg = None
    ckpt = workdir / CHECKPOINT if workdir is not None else None
    return _Run(job, data, device, syn, labels, opt, method, reg, hooks, shard, ckpt)


def _restore(run: _Run) -> None:
    """Continue from the checkpoint: images, image optimizer, the method's own state, history, step."""
    state = load_checkpoint(run.ckpt, run.job, run.device)
    with torch.no_grad():
        run.syn.copy_(state["images"])
    run.opt.load_state_dict(state["opt"])
    run.method.load_state_dict(state.get("method", {}))
    run.history = History(**state["history"])
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
        total = loss_dd + job.cmi.lam * cmi
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
                              "try a smaller method.lr_img or cmi.lam")
    run.opt.step()
    return dd_v, (cmi_v if cmi is not None else None), total_v


def _mean_metrics(steps: list[tuple[float, float | None, float]]) -> dict[str, float]:
    """An iteration's loss_dd and loss_total averaged over its image steps; cmi over the steps that had it."""
    metrics = {"loss_dd": sum(s[0] for s in steps) / len(steps), "loss_total": sum(s[2] for s in steps) / len(steps)}
    cmis = [s[1] for s in steps if s[1] is not None]
    if cmis:
        metrics["cmi"] = sum(cmis) / len(cmis)
    return metrics


def _log_progress(run: _Run, step: int, metrics: dict[str, float], elapsed: float) -> None:
    """About 20 lines per run: the losses, seconds per iteration, elapsed and an estimate of the time left."""
    iterations = run.job.method.iterations
    if step % max(1, iterations // 20) and step != iterations:
        return
    rate = elapsed / max(1, step - run.start)
    cmi_txt = f" cmi {metrics['cmi']:.4f}" if "cmi" in metrics else ""
    log.info("it %d/%d loss_dd %.4f%s (%.3f s/it), elapsed %s, left ~%s", step, iterations, metrics["loss_dd"],
             cmi_txt, rate, format_seconds(elapsed), format_seconds(rate * (iterations - step)))


def _evaluate_and_checkpoint(run: _Run, step: int, t0: float) -> None:
    """An intermediate evaluation every ``eval.every`` steps (main worker), a checkpoint every ``checkpoint_every``."""
    job, main = run.job, run.shard is None or run.shard.main
    syn, labels = run.syn, run.labels
    if main and job.eval.every and step % job.eval.every == 0 and step < job.method.iterations:
        res = evaluate(*decode(syn.detach(), labels, job.method.factor), run.data, job.eval, job.seed, run.device)
        run.hooks.on_eval(step, res.metrics())
        run.history.evals.append({"step": step, **res.metrics()})
    if run.ckpt is not None and job.output.checkpoint_every and step % job.output.checkpoint_every == 0:
        run.history.seconds = time.perf_counter() - t0  # the clock resumes from here
        _save_checkpoint(run.ckpt, syn, run.opt, step, run.history, _resume_key(job), run.method)
        run.hooks.on_checkpoint(step, run.ckpt, _synset(job, run.data, syn, labels))


def _synset(job: DistillJob, data: Dataset, syn: torch.Tensor, labels: torch.Tensor) -> SyntheticSet:
    meta = {
        "dataset": data.name, "num_classes": data.num_classes, "ipc": job.ipc, "channels": data.channels,
        "im_size": data.im_size, "mean": list(data.mean), "std": list(data.std),
        "class_names": list(data.class_names), "method": job.method.name, "lam": job.cmi.lam,
        "proxies": job.proxies.set if job.cmi.lam > 0 else None, "seed": job.seed, "factor": job.method.factor,
        "config": job.model_dump(mode="json"),
    }
    return SyntheticSet(syn.detach().cpu().clone(), labels.detach().cpu().clone(), meta)


def _feed(h, obj) -> None:
    """Feed ``obj`` (nested dicts, lists, tensors, numbers, text, None) into the hash ``h``, types and order kept."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().reshape(-1).contiguous()
        h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, float):
        h.update(f"F{obj.hex()};".encode())
    elif obj is None or isinstance(obj, (bool, int, str)):
        h.update(f"{type(obj).__name__[0]}{obj!r};".encode())
    else:
        raise TypeError(f"a checkpoint holds no {type(obj).__name__}")


def checkpoint_digest(state: dict) -> str:
    """The sha256 of a checkpoint's content (every field but ``sha256``), independent of the file's layout."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A loop checkpoint's state (``weights_only``: nothing is unpickled), verified against its own checksum.

    Raises:
        IntegrityError: one line naming the file: it cannot be read (truncated, not a checkpoint), carries no
            checksum, or its content does not match the checksum it carries (a flipped byte).
    """
    fix = "nothing was overwritten; remove it to start over, or resume an MLflow run with --resume-run RUN_ID"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated zip, a garbled pickle, ...: torch's errors are many
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:160]
        raise IntegrityError(f"{path}: is damaged and cannot be read as a checkpoint ({reason}); {fix}") from None
    if not isinstance(state, dict) or "sha256" not in state:
        raise IntegrityError(f"{path}: carries no checksum (written by an older cmidd or not a checkpoint); {fix}")
    got = checkpoint_digest(state)
    if got != state["sha256"]:
        raise IntegrityError(f"{path}: is damaged: its content's sha256 {got[:16]}... does not match the "
                             f"{str(state['sha256'])[:16]}... it was written with; {fix}")
    return state


def load_checkpoint(path: Path, job: DistillJob, device: torch.device | str = "cpu") -> dict:
    """A loop checkpoint's state, verified (``read_checkpoint``), after checking that ``job`` may resume it.

    Raises:
        IntegrityError: the file is damaged or carries no checksum.
        ConfigError: the checkpoint was written by a different config.
    """
    state = read_checkpoint(path, device)
    if state["key"] != _resume_key(job):
        raise ConfigError(f"--resume: {path} was written by a different config; remove it or drop --resume")
    return state


def _save_checkpoint(path: Path, syn, opt, step: int, history: History, key: dict, method=None) -> None:
    """Atomic: write to a temp file, then rename, so a kill never leaves a torn checkpoint.

    The method's own state (MTT's learnable step size; {} for the others) travels with the images; the state's
    own sha256 (``checkpoint_digest``) travels in the same file, so the file and its checksum never disagree.
    """
    state = {
        "images": syn.detach().cpu(), "opt": opt.state_dict(), "step": step,
        "history": asdict(history), "key": key,
    }
    if method is not None:
        state["method"] = method.state_dict()
    state["sha256"] = checkpoint_digest(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())

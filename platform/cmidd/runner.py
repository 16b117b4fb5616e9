"""Run one validated job of any kind, locally, writing its results into ``job.output.dir``.

Order of work, so that bad input leaves nothing behind: validate (already done) -> load data (may raise
DataError) -> check data-dependent rules -> only then create the output folder and start.

Each job kind has one runner, registered by kind. The result is a plain dict (also written as
``result.json``) that the CLI prints and the tracking layer logs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from . import experts as expert_zoo
from . import names
from . import proxies as proxy_zoo
from .curves import draw_curves, strict
from .data import Dataset, load_dataset
from .cmi import measure_cmi
from .device import resolve_device
from .checkpoint import CHECKPOINT, load_checkpoint
from .distill import History, Hooks, distill
from .ensemble import check_combinable, combine_sets
from .gain import spread
from .errors import ConfigError, DataError
from .evaluate import EvalResult, baseline_set, evaluate
from .lam import LAM_KEY, RATIO_KEY, effective_lambda, set_label_of_job
from .memory import check_memory
from .outdir import owned
from .registry import Registry
from .synthetic import SyntheticSet

if TYPE_CHECKING:
    from .config import BaselineJob, DistillJob, EnsembleJob, EvaluateJob, ExpertsJob, PretrainProxiesJob

log = logging.getLogger(__name__)

CURVES = "curves.png"
DRAWS = "draws"  # a baseline job's drawn sets: <output.dir>/draws/<seed>/
RUNNERS: Registry[Callable[..., "JobResult"]] = Registry("job kind")
Loop = Callable[..., tuple[SyntheticSet, History]]


@dataclass
class Draw:
    """One scored random-real draw of a ``baseline`` job: the seed that drew it, the set, its scores."""

    draw: int
    synset: SyntheticSet
    metrics: dict[str, float]


@dataclass
class JobResult:
    """What a job produced: metrics, tables and the paths it wrote."""

    kind: str
    outdir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    synset: SyntheticSet | None = None
    history: History | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    draws: list[Draw] = field(default_factory=list)  # a baseline job's scored draws

    def to_json(self) -> dict[str, Any]:
        out = {
            "kind": self.kind, "outdir": str(self.outdir), "metrics": self.metrics, "rows": self.rows,
            "sha256": self.synset.sha256() if self.synset is not None else None, **self.extra,
        }
        if self.draws:
            out["draws"] = [{"draw": d.draw, "sha256": d.synset.sha256(), "metrics": d.metrics} for d in self.draws]
        return out


def load_job_data(job) -> Dataset:
    """The job's data set (raises DataError for a missing root and similar)."""
    d = job.data
    return load_dataset(d.name, root=d.root, im_size=d.im_size, download=d.download, seed=d.split_seed)


def check_ipc(ipc: int, data: Dataset) -> None:
    """IPC must not exceed the smallest class of the train split."""
    smallest = int(data.class_counts().min())
    if ipc > smallest:
        raise DataError(f"ipc: ipc <= smallest class size must hold, but got ipc={ipc} (smallest class has {smallest})")


def check_job_data(job, data: Dataset) -> None:
    """The machine- and data-dependent rules of a job (a CUDA device exists if asked for; IPC <= the smallest
    class where a set of that IPC is drawn; a distill job's estimated memory within the limit: ``cmidd.memory``).

    ``run_job`` checks them before anything is written; ``cmidd.tracking`` before a run is created.

    Raises:
        ConfigError: naming the field, the rule and the value (DataError for the data's rules).
    """
    device = resolve_device(job.device)  # device: cuda without a GPU is bad input too, before the store is touched
    if job.kind in ("distill", "baseline") or (job.kind == "evaluate" and "random-real" in job.eval.baselines):
        check_ipc(job.ipc, data)
    if job.kind == "distill":  # ipc x channels x size and net.width: refused before anything is allocated
        check_memory(job, data.num_classes, data.channels, data.im_size, device.type)
    if job.kind == "ensemble":
        ensemble_sources(job, data)


def check_resume_point(job, resume: bool) -> int | None:
    """With ``resume``, the job's checkpoint (if any) must be intact and of this config: checked before any
    other work (proxies, experts, an MLflow run), so a damaged one costs nothing and overwrites nothing.

    Returns:
        The step the job resumes from (the local checkpoint's), or None without one.

    Raises:
        IntegrityError: the checkpoint is damaged (one line naming the file).
        ConfigError: it was written by a different config.
    """
    ckpt = job.output.dir / CHECKPOINT
    if resume and job.kind == "distill" and ckpt.is_file():
        return int(load_checkpoint(ckpt, job)["step"])
    return None


def run_job(job, hooks: Hooks | None = None, resume: bool = False, data: Dataset | None = None,
            loop: Loop = distill) -> JobResult:
    """Run a validated job of any kind.

    Args:
        job: a ``DistillJob``, ``PretrainProxiesJob``, ``ExpertsJob``, ``EvaluateJob``, ``EnsembleJob`` or
            ``BaselineJob``.
        hooks: callbacks for the distillation loop (tracking, reporting).
        resume: continue a distill job from its checkpoint.
        data: the loaded data set (loaded from ``job.data`` if None).
        loop: the distillation loop, called like ``distill``; ``cmidd.ray.run_job`` passes the Ray Train loop
            for ``scaling.workers > 1`` (the core never imports Ray).

    Returns:
        JobResult, also written to ``<output.dir>/result.json``.

    Raises:
        ConfigError: ``output.dir`` holds files cmidd did not write, or another job holds it (``cmidd.outdir``).
    """
    data = data if data is not None else load_job_data(job)
    check_job_data(job, data)
    with owned(job.output.dir):  # one job per folder, and only a folder of cmidd's (cmidd.outdir)
        result = RUNNERS.get(job.kind)(job, data, hooks or Hooks(), resume, loop)
        (result.outdir / "result.json").write_text(json.dumps(strict(result.to_json()), indent=2, default=str))
    return result


def proxies_dir(job, data: Dataset) -> Path:
    """The folder of the job's proxy set (``proxies.dir`` or the shared default beside the job)."""
    return proxy_zoo.default_dir(job.proxies, data, job.output.dir.parent)


def experts_dir(job, data: Dataset) -> Path:
    """The folder of the job's expert trajectories (``experts.dir`` or the shared default beside the job)."""
    return expert_zoo.default_dir(job.experts, job.net, data, job.output.dir.parent)


@RUNNERS.register("experts")
def _run_experts(job: ExpertsJob, data: Dataset, hooks: Hooks, resume: bool, loop: Loop) -> JobResult:
    device = resolve_device(job.device)
    folder = experts_dir(job, data)
    job.output.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    trained = expert_zoo.train_experts(job.experts, job.net, data, job.seed, device)
    expert_zoo.save(folder, job.experts, job.net, data, trained)
    rows = [{"expert": i, "epochs": job.experts.epochs, "test_acc": acc} for i, (_, acc) in enumerate(trained)]
    return JobResult("experts", job.output.dir, metrics={"time/experts_s": time.perf_counter() - t0}, rows=rows,
                     extra={"experts_dir": str(folder)})


@RUNNERS.register("pretrain-proxies")
def _run_pretrain(job: PretrainProxiesJob, data: Dataset, hooks: Hooks, resume: bool, loop: Loop) -> JobResult:
    device = resolve_device(job.device)
    folder = proxies_dir(job, data)
    job.output.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    trained = proxy_zoo.pretrain(job.proxies, data, job.seed, device)
    proxy_zoo.save(folder, job.proxies, data, trained)
    rows = [{"arch": s.arch, "seed": s.seed, "epochs": s.epochs, "test_acc": acc} for s, _, acc in trained]
    return JobResult(
        "pretrain-proxies", job.output.dir, metrics={"time/pretrain_s": time.perf_counter() - t0}, rows=rows,
        extra={"proxies_dir": str(folder)},
    )


# the artifacts a method may declare (``MethodBase.artifacts``): name -> ``prepare(job, data, device)``
ARTIFACTS: dict[str, Callable[..., Any]] = {
    "experts": lambda job, data, device: expert_zoo.ensure(job.experts, job.net, data, experts_dir(job, data),
                                                           job.seed, device),
}


@RUNNERS.register("distill")
def _run_distill(job: DistillJob, data: Dataset, hooks: Hooks, resume: bool, loop: Loop) -> JobResult:
    if job.scaling.workers > 1 and loop is distill:
        raise ConfigError(f"scaling.workers: > 1 needs the Ray Train loop (cmidd.ray.run_job), "
                          f"got {job.scaling.workers} with the single-process loop")
    check_resume_point(job, resume)  # a damaged checkpoint is refused before the proxies are pre-trained
    device = resolve_device(job.device)
    proxies = None  # loaded (or pre-trained) before the job's folder exists: a bad proxy set writes nothing
    if job.cmi.on:
        if job.proxies.from_registry is not None:  # cmidd.tracking.resolve_registry_proxies turns it into dir
            raise ConfigError(f"proxies.from_registry={job.proxies.from_registry!r} needs the MLflow registry: "
                              "run with tracking (not --no-track)")
        proxies = proxy_zoo.ensure(job.proxies, data, proxies_dir(job, data), job.seed, device)
    artifacts = {name: ARTIFACTS[name](job, data, device) for name in job.method.artifacts}
    experts = artifacts.get("experts")
    outdir = job.output.dir
    outdir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    lam = effective_lambda(job, data, proxies)  # alpha's calibration: once, on all proxies, before the loop
    synset, history = loop(job, data, proxies, hooks, workdir=outdir, resume=resume, experts=experts, lam=lam)
    t_distill = time.perf_counter() - t0
    synset.save(outdir / "synthetic")
    (outdir / "history.json").write_text(json.dumps(strict(history.__dict__), default=float))

    t0 = time.perf_counter()
    res = evaluate(*synset.training_set(), data, job.eval, job.seed, device)
    metrics = {**res.metrics(), names.DISTILL_SECONDS: t_distill, "time/eval_s": time.perf_counter() - t0}
    rows = res.rows(set_label_of_job(job))
    _evaluate_baselines(job, data, device, rows, metrics)
    metrics[LAM_KEY] = float(synset.meta["lam"])  # what the loop used (a checkpoint's on resume)
    meter = proxies or _trained_proxies(job, data, device)  # CMI off: measured when its proxies are at hand
    if meter:
        metrics.update(cmi_metrics(*synset.training_set(), data, job, meter))
    title = f"{job.name}: {set_label_of_job(job)}, IPC {job.ipc}, {data.name}"
    draw_curves(history, res.metrics(), outdir / CURVES, title)
    return JobResult("distill", outdir, metrics=metrics, rows=rows, synset=synset, history=history)


def _evaluate_baselines(job, data: Dataset, device, rows: list[dict], metrics: dict[str, float]) -> None:
    """Evaluate each of ``job.eval.baselines``; append its rows and ``baseline/<name>/...`` metrics."""
    for name in job.eval.baselines:
        x, y = baseline_set(name, data, job.ipc, job.seed, device)
        b = evaluate(x, y, data, job.eval, job.seed, device)
        rows += b.rows(name)
        metrics.update({f"baseline/{name}/{k}": v for k, v in b.metrics().items()})


def _trained_proxies(job: DistillJob, data: Dataset, device):
    """The job's proxy set if it is already trained in its folder (never trained or fetched just to measure),
    so that a plain-DD run (the zero arm of a study) reports ``cmi_ratio`` under the same proxies; else None."""
    if job.proxies.from_registry is not None:
        return None
    folder = proxies_dir(job, data)
    return proxy_zoo.load(folder, data, device) if (folder / "manifest.json").is_file() else None


def cmi_metrics(x, y, data: Dataset, job: DistillJob, proxies) -> dict[str, float]:
    """``cmi_final`` (the set's CMI averaged over all proxies), ``cmi_random_real`` (that of the random-real set
    of the same IPC and seed) and ``cmi_ratio`` = their quotient (scale-free: below 1 the set is more
    class-centred than real images; omitted when the random-real CMI is 0, as at IPC 1)."""
    out = {"cmi_final": measure_cmi(x, y, proxies, data.num_classes, job.cmi)}
    out["cmi_random_real"] = measure_cmi(*baseline_set("random-real", data, job.ipc, job.seed), proxies,
                                         data.num_classes, job.cmi)
    if out["cmi_random_real"] > 0:
        out[RATIO_KEY] = out["cmi_final"] / out["cmi_random_real"]
    return out


@RUNNERS.register("evaluate")
def _run_evaluate(job: EvaluateJob, data: Dataset, hooks: Hooks, resume: bool, loop: Loop) -> JobResult:
    device = resolve_device(job.device)
    synset = SyntheticSet.load(job.synset) if job.synset is not None else None  # verifies checksums
    if synset is not None and (synset.meta.get("im_size"), synset.meta.get("channels")) != (
        data.im_size, data.channels
    ):
        raise DataError(
            f"synset: {job.synset} has {synset.meta.get('channels')}x{synset.meta.get('im_size')}px images, "
            f"but data is {data.channels}x{data.im_size}px"
        )
    job.output.dir.mkdir(parents=True, exist_ok=True)
    rows, metrics = [], {}
    if synset is not None:
        res: EvalResult = evaluate(*synset.training_set(), data, job.eval, job.seed, device)
        rows += res.rows(str(synset.meta.get("method", "synset")))
        metrics.update(res.metrics())
    _evaluate_baselines(job, data, device, rows, metrics)
    return JobResult("evaluate", job.output.dir, metrics=metrics, rows=rows, synset=synset)


@RUNNERS.register("baseline")
def _run_baseline(job: BaselineJob, data: Dataset, hooks: Hooks, resume: bool, loop: Loop) -> JobResult:
    """Draw and score each random-real set of ``job.draws`` (saved, with checksums, in ``<output.dir>/draws/<seed>``);
    the metrics are the first draw's plus the spread over the draws (``draws/mean|std/<ranking metric>``, ``draws/n``),
    every draw's scores are in ``draws``, the rows name each draw."""
    device = resolve_device(job.device)
    job.output.dir.mkdir(parents=True, exist_ok=True)
    draws, rows = [], []
    for d in job.draws:
        synset = random_real_set(data, job.ipc, d)
        res = evaluate(*synset.training_set(), data, job.eval, job.seed, device)
        synset.save(job.output.dir / DRAWS / str(d))
        rows += [{**r, "draw": d} for r in res.rows(f"random-real draw {d}")]
        draws.append(Draw(d, synset, res.metrics()))
    over = spread([d.metrics[names.CROSS_ARCH_MEAN] for d in draws])
    metrics = {**draws[0].metrics, f"draws/mean/{names.CROSS_ARCH_MEAN}": over["mean"], "draws/n": float(over["n"])}
    if over["std"] is not None:
        metrics[f"draws/std/{names.CROSS_ARCH_MEAN}"] = over["std"]
    return JobResult("baseline", job.output.dir, metrics=metrics, rows=rows, draws=draws,
                     extra={"draws_dir": str(job.output.dir / DRAWS)})


def ensemble_sources(job: EnsembleJob, data: Dataset) -> list[SyntheticSet]:
    """The ensemble job's source sets, checksums verified, combinable in its mode and of the job's data.

    Raises:
        DataError: a folder that holds no set, a set of other images than ``data``, sets that do not match.
        IntegrityError: a checksum does not match.
    """
    missing = [str(p) for p in job.sets if not (Path(p) / "manifest.json").is_file()]
    if missing:
        raise DataError(f"sets: every entry must be a set folder (with manifest.json), but got {missing[0]}")
    sets = [SyntheticSet.load(p) for p in job.sets]
    check_combinable(sets, job.mode)
    meta = sets[0].meta
    if (meta.get("dataset"), meta.get("im_size"), meta.get("channels")) != (data.name, data.im_size, data.channels):
        raise DataError(f"sets: {job.sets[0]} holds {meta.get('dataset')} "
                        f"{meta.get('channels')}x{meta.get('im_size')}px images, but data is {data.name} "
                        f"{data.channels}x{data.im_size}px")
    return sets


@RUNNERS.register("ensemble")
def _run_ensemble(job: EnsembleJob, data: Dataset, hooks: Hooks, resume: bool, loop: Loop) -> JobResult:
    """Combine the sources (per-class-best scores each source per class under the job's protocol first), save
    the set in ``<output.dir>/synthetic`` and evaluate it."""
    device = resolve_device(job.device)
    sets = ensemble_sources(job, data)
    scores = None
    if job.mode == "per-class-best":
        scores = torch.tensor([evaluate(s.images, s.labels, data, job.eval, job.seed, device).class_acc
                               for s in sets])
    synset = combine_sets(sets, job.mode, scores, job.source_labels())
    job.output.dir.mkdir(parents=True, exist_ok=True)
    synset.save(job.output.dir / "synthetic")
    res = evaluate(synset.images, synset.labels, data, job.eval, job.seed, device)
    return JobResult("ensemble", job.output.dir, metrics=res.metrics(), rows=res.rows(synset.meta["method"]),
                     synset=synset, extra={"sources": job.source_labels(), "mode": job.mode})


def random_real_set(data: Dataset, ipc: int, seed: int) -> SyntheticSet:
    """The random-real baseline as a SyntheticSet (for checksums and CMI in reports)."""
    x, y = baseline_set("random-real", data, ipc, seed)
    meta = {
        "dataset": data.name, "num_classes": data.num_classes, "ipc": ipc, "channels": data.channels,
        "im_size": data.im_size, "mean": list(data.mean), "std": list(data.std),
        "class_names": list(data.class_names), "method": "random-real", "seed": seed,
    }
    return SyntheticSet(x, y, meta)

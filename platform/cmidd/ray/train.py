"""Ray Train: the distillation loop (``distill.distill``) on N workers, the proxy ensemble spread across them.

Each worker runs the same loop with a ``distill.Shard``: it holds the full synthetic set and the proxies
``r, r + N, ...``, draws the same random numbers as every other worker, computes the DD term on its classes
and the CMI term on its proxies, and all-reduces (sums) the synthetic-image gradients, so that every worker
takes the identical SGD step and the result equals the single-process loop with ``cmi.agg: mean``.

Rank 0 sends its per-step metrics, evaluations and checkpoints to a small actor; the driver
(``cmidd.ray._driver``) drains it on the calling thread and calls the caller's ``Hooks`` there (one MLflow run
per job, Tune reports from the trial's own thread). ``should_stop`` travels back the same way, one step late. Every
``output.checkpoint_every`` steps all workers call ``ray.train.report`` with rank 0's checkpoint (images,
optimizer state, step, history); after a worker failure (``scaling.max_failures``) the group restarts from
``ray.train.get_checkpoint()``. The driver also keeps the last checkpoint in ``workdir`` as the plain loop
does, so ``--resume`` works across both.

Example:
    >>> synset, history = distill_distributed(job, data, proxies, workdir=Path("runs/x"))
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DistillJob
from ..data import Dataset
from ..checkpoint import CHECKPOINT, load_checkpoint
from ..distill import History, Hooks, distill
from ..lam import effective_lambda
from ..shard import Shard
from ..errors import CmiddError, ConfigError
from ..synthetic import SyntheticSet
from . import connect, disconnect
from ._driver import Driver, drive, outcome, start_sink

log = logging.getLogger(__name__)


class _WorkerHooks(Hooks):
    """Hooks inside a worker: rank 0 forwards to the sink; checkpoints are collective ``ray.train.report``s."""

    def __init__(self, sink, shard: Shard, device: str) -> None:
        self.sink, self.shard, self.device = sink, shard, device
        self._pending = self._last = None  # the last two steps' put()s: their answer is the stop request

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.shard.main:
            event = (step, metrics, time.perf_counter())  # rank 0's clock, for per-iteration timings
            self._last, self._pending = self._pending, self.sink.put.remote("step", event)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        if self.shard.main:  # only rank 0 evaluates
            self.sink.put.remote("eval", (step, metrics))

    def on_checkpoint(self, step: int, path: Path, synset: SyntheticSet) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(path.parent)) if self.shard.main else None
        ray.train.report({"step": step}, checkpoint=ckpt)  # collective: every rank calls it
        if self.shard.main:
            self.sink.put.remote("checkpoint", (step, path.read_bytes(), synset))

    def should_stop(self) -> bool:
        import ray

        stop = False
        if self.shard.main and self._last is not None:
            stop = bool(ray.get(self._last))
        if self.shard.world > 1:  # every worker must leave the loop at the same step
            flag = torch.tensor([float(stop)], device=self.device)  # nccl needs it on the GPU
            torch.distributed.broadcast(flag, 0)
            stop = bool(flag.item())
        return stop


def _train_worker(cfg: dict) -> None:
    """The function every Ray Train worker runs: resume state, then ``distill`` with this worker's shard."""
    import ray
    import ray.train
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = "cuda" if cfg["job"].scaling.use_gpu else "cpu"  # Ray gives a GPU worker its own CUDA device
    job: DistillJob = cfg["job"].model_copy(update={"device": device})
    data: Dataset = ray.get(cfg["data"])
    held: dict[int, nn.Module] = ray.get(cfg["proxies"][rank]) if cfg["proxies"] else {}
    proxies = [held.get(i) for i in range(cfg["n_proxies"])] if cfg["n_proxies"] else None
    if proxies:
        proxies = [p.to(device) if p is not None else None for p in proxies]

    def all_reduce(t: torch.Tensor) -> None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)

    shard = Shard(rank, world, all_reduce)
    sink = cfg["sink"]
    work = Path(tempfile.mkdtemp(prefix=f"cmidd-rank{rank}-"))
    try:
        resumed_from, ray_ckpt = 0, ray.train.get_checkpoint()
        if ray_ckpt is not None:  # a restart after a failure: Ray Train's last checkpoint wins
            with ray_ckpt.as_directory() as d:
                shutil.copy(Path(d) / CHECKPOINT, work / CHECKPOINT)
        elif cfg["initial"] is not None:  # --resume from the driver's workdir
            (work / CHECKPOINT).write_bytes(ray.get(cfg["initial"]))
        if (work / CHECKPOINT).is_file():
            resumed_from = int(torch.load(work / CHECKPOINT, weights_only=True)["step"])
        sink.put.remote("worker", {
            "rank": rank, "world": world, "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
            "resumed_from": resumed_from, "ray_checkpoint": ray_ckpt is not None, "threads": torch.get_num_threads(),
        })
        hooks = _WorkerHooks(sink, shard, device)
        try:
            experts = ray.get(cfg["experts"]) if cfg["experts"] is not None else None
            synset, history = distill(job, data, proxies, hooks, work, resume=True, shard=shard, experts=experts,
                                      lam=cfg["lam"])
        except CmiddError as e:  # deterministic: every rank raises at the same step; no restart would help
            if shard.main:
                ray.get(sink.put.remote("error", (type(e).__name__, str(e))))
            return
        if shard.main:
            ray.get(sink.put.remote("done", (synset, asdict(history))))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _on_cpu(net: nn.Module) -> nn.Module:
    """``net`` itself if on the CPU, else a CPU copy (the driver's proxies stay where they are)."""
    if all(p.device.type == "cpu" for p in net.parameters()):
        return net
    return copy.deepcopy(net).cpu()


def _check_resources(job: DistillJob) -> None:
    """The cluster must be able to place every worker at once (Ray would otherwise wait forever)."""
    import ray

    s = job.scaling
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if s.workers * s.cpus_per_worker > cpus + 1e-9:
        raise ConfigError(
            f"scaling: workers * cpus_per_worker <= the cluster's CPUs must hold, but got "
            f"{s.workers} * {s.cpus_per_worker} > {cpus:g}"
        )
    if s.use_gpu and s.workers > gpus:
        raise ConfigError(f"scaling.use_gpu: one GPU per worker needed, but got workers={s.workers} > {gpus:g} GPUs")


def _trainer(job: DistillJob, config: dict, storage: Path):
    """The TorchTrainer of one job: N workers of ``cpus_per_worker`` CPUs (+ 1 GPU), gloo or nccl, restarts."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    s = job.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}
    return TorchTrainer(
        _train_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=s.workers, use_gpu=s.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(
            name=f"{job.name}-{uuid.uuid4().hex[:8]}", storage_path=str(storage),
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def distill_distributed(
    job: DistillJob,
    data: Dataset,
    proxies: list[nn.Module] | None = None,
    hooks: Hooks | None = None,
    workdir: Path | None = None,
    resume: bool = False,
    experts: list[torch.Tensor] | None = None,
    lam: float | None = None,
) -> tuple[SyntheticSet, History]:
    """``distill`` on ``job.scaling.workers`` Ray Train workers; same arguments and result.

    Connects to Ray first if this process is not connected yet (``cmidd.ray.connect()``: ``$RAY_ADDRESS``, else
    a new local Ray, shut down at the end); ``cmidd run --address`` connects before calling this.

    Args:
        job: validated distill job (``scaling``: workers, use_gpu, cpus_per_worker, max_failures).
        data: the real data set (sent once through Ray's object store).
        proxies: the proxy set; worker r receives only proxies r, r + N, ...
        hooks: called on this thread with rank 0's steps, evaluations and checkpoints (a ``StepClock`` is
            stamped with rank 0's clock at the end of each step).
        workdir: where the last checkpoint (``checkpoint.pt``), Ray Train's storage (``ray/``) and the
            worker records (``ray_workers.json``) go; None = a temporary folder.
        resume: continue from ``workdir/checkpoint.pt`` if it exists (written by either loop).
        experts: MTT's expert trajectories (every worker gets them all; MTT's term is rank 0's, see mtt.py).
        lam: the CMI weight (None: ``effective_lambda`` here, on all the proxies, before any worker starts).

    Returns:
        (SyntheticSet, History) from rank 0.

    Raises:
        ConfigError: bad scaling for the cluster, a checkpoint of another config, an unreachable Ray.
        DivergenceError: as the plain loop.
        CmiddError: Ray Train failed more than ``scaling.max_failures`` times.
    """
    import ray

    hooks = hooks or Hooks()
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # propagated to the controller and workers
    if job.scaling.workers > data.num_classes:
        raise ConfigError(f"scaling.workers <= the number of classes must hold (each worker matches >= 1 class), "
                          f"but got {job.scaling.workers} > {data.num_classes}")
    initial = _initial_checkpoint(job, workdir, resume)
    lam = effective_lambda(job, data, proxies) if lam is None else lam
    started = connect()
    tmp_root = None
    try:
        _check_resources(job)
        if workdir is None:
            tmp_root = Path(tempfile.mkdtemp(prefix="cmidd-ray-"))
        folder = workdir if workdir is not None else tmp_root
        sink = start_sink()
        config = _worker_config(job, data, proxies, sink, initial, experts) | {"lam": lam}
        driver = Driver(hooks, folder, sink)
        failure = drive(_trainer(job, config, folder.resolve() / "ray"), sink, driver)
        ray.kill(sink)
        return outcome(driver, failure, job.scaling.max_failures)
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)
        if started:
            disconnect()


def _initial_checkpoint(job: DistillJob, workdir: Path | None, resume: bool) -> bytes | None:
    """The bytes of ``workdir/checkpoint.pt`` to resume from (checked against ``job`` first), or None."""
    ckpt = workdir / CHECKPOINT if workdir is not None else None
    if not (resume and ckpt is not None and ckpt.is_file()):
        return None
    load_checkpoint(ckpt, job)  # a checkpoint of another config fails here, before any worker starts
    return ckpt.read_bytes()


def _worker_config(job: DistillJob, data: Dataset, proxies: list[nn.Module] | None, sink, initial: bytes | None,
                   experts: list[torch.Tensor] | None) -> dict[str, Any]:
    """The ``train_loop_config`` of every worker: large objects go through Ray's object store once."""
    import ray

    n, workers = (len(proxies) if proxies else 0), job.scaling.workers
    shards = [ray.put({i: _on_cpu(proxies[i]) for i in range(r, n, workers)}) for r in range(workers)]
    return {
        "job": job, "data": ray.put(data), "proxies": shards if n else None, "n_proxies": n, "sink": sink,
        "initial": ray.put(initial) if initial is not None else None,
        "experts": ray.put(experts) if experts is not None else None,
    }

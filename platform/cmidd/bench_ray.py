"""Ray Train's cost per distillation iteration: the plain loop against 1 and N Ray Train workers, same settings.

One run per configuration of ``warmup + repeats * iterations`` steps; each repeat is a segment of
``iterations`` consecutive steps timed on the loop's own clock (rank 0's under Ray), so Ray's start-up,
the worker processes' imports and the first steps are excluded. Data are random CIFAR-shaped tensors (the
timing does not depend on the pixels); the proxies are randomly initialized nets (nor on their weights).

Example:
    >>> ray_speed(repeats=5, iterations=5)["ratios"]["ray_1w_over_plain"]  # 1.0 = no overhead
    python -m cmidd.bench_ray --repeats 5 --iterations 5     # prints the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import statistics
import time

import torch

from .cmi import freeze
from .config import parse_job
from .data import Dataset
from .distill import Hooks, distill
from .methods.base import reinit_
from .nets import create_net


def random_dataset(num_classes: int = 10, per_class: int = 100, im_size: int = 32, channels: int = 3,
                   seed: int = 0) -> Dataset:
    """A normalized-looking random data set of the given shape (for timings only)."""
    gen = torch.Generator().manual_seed(seed)
    n = num_classes * per_class
    y = torch.arange(num_classes).repeat_interleave(per_class)
    return Dataset(
        name="random", train_x=torch.randn(n, channels, im_size, im_size, generator=gen), train_y=y,
        test_x=torch.randn(num_classes * 2, channels, im_size, im_size, generator=gen),
        test_y=torch.arange(num_classes).repeat_interleave(2), num_classes=num_classes, channels=channels,
        im_size=im_size, mean=(0.0,) * channels, std=(1.0,) * channels,
        class_names=tuple(str(c) for c in range(num_classes)),
    )


class _Clock(Hooks):
    """The loop's clock at the end of each step (the plain loop calls hooks synchronously)."""

    def __init__(self) -> None:
        self.t: list[float] = []

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.t.append(time.perf_counter())


def _segments(clock: list[float], warmup: int, repeats: int, iterations: int) -> dict[str, float]:
    """Seconds per iteration of each timed segment, summarized."""
    per = [(clock[warmup - 1 + (r + 1) * iterations] - clock[warmup - 1 + r * iterations]) / iterations
           for r in range(repeats)]
    return {"median_s": statistics.median(per), "min_s": min(per), "max_s": max(per), "per_repeat_s": per}


def ray_speed(repeats: int = 5, iterations: int = 5, ipc: int = 10, im_size: int = 32,
              workers: tuple[int, ...] = (1, 2), warmup: int = 2, proxies: int = 2, proxy_net: str = "ConvNet",
              net: str = "ConvNet", batch_real: int = 64, threads: int = 1, address: str | None = None,
              seed: int = 0) -> dict:
    """Per-iteration seconds of DM + CMI (``agg: mean`` over ``proxies`` nets): plain loop vs Ray Train.

    Args:
        repeats: timed segments per configuration (median / min / max over them).
        iterations: steps per segment.
        ipc, im_size: synthetic images per class; image side (3 channels, 10 classes).
        workers: Ray Train worker counts to time.
        threads: torch threads of the plain loop and CPUs (so threads) of each Ray worker: the same compute
            per process, so that ``ray_1w / plain`` is Ray's overhead and ``ray_2w / plain`` the speed-up.
        warmup: untimed steps first.
        proxies, proxy_net: the CMI ensemble (spread over the workers).
        net, batch_real: the DM embedder and real images per class per step.
        address: Ray cluster (None = a local Ray, started and stopped here unless one is running).

    Returns:
        ``{"settings", "plain", "ray_<n>w" ..., "ratios": {"ray_<n>w_over_plain": median ratio}}``; the plain
        loop is timed before and after the Ray runs and its figures pool both (``repeats * 2`` segments).
    """
    from .ray import connect
    from .ray.train import distill_distributed

    data = random_dataset(im_size=im_size, seed=seed)
    nets = [freeze(reinit_(create_net(proxy_net, 3, 10, im_size), seed + 1 + i)) for i in range(proxies)]
    total = warmup + repeats * iterations
    raw = {
        "kind": "distill", "name": "bench-ray", "seed": seed, "ipc": ipc, "device": "cpu",
        "net": {"name": net}, "method": {"name": "dm", "iterations": total, "batch_real": batch_real},
        "cmi": {"lam": 1.0, "agg": "mean", "k": proxies},
        "eval": {"archs": [net], "num_eval": 1, "epochs": 1}, "output": {"checkpoint_every": 0},
    }
    out: dict = {"settings": {
        "repeats": repeats, "iterations": iterations, "warmup": warmup, "ipc": ipc, "im_size": im_size,
        "proxies": f"{proxies} x {proxy_net}", "net": net, "batch_real": batch_real, "method": "dm+cmi (mean)",
        "machine": f"{host.machine()} {os.cpu_count()} CPUs (shared: figures are noisy)",
    }}
    def plain() -> list[float]:
        clock, before = _Clock(), torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            distill(parse_job(raw), data, nets, clock)
        finally:
            torch.set_num_threads(before)
        return clock.t

    before = plain()  # timed before and after the Ray runs: a shared machine's load drifts

    import ray

    started = connect(address)
    try:
        for n in workers:
            job = parse_job({**raw, "scaling": {"workers": n, "cpus_per_worker": threads}})
            t: list[float] = []
            distill_distributed(job, data, nets, step_clock=t)
            out[f"ray_{n}w"] = {**_segments(t, warmup, repeats, iterations), "cpus_per_worker": threads}
    finally:
        if started:
            ray.shutdown()
    after = plain()
    segs = [_segments(t, warmup, repeats, iterations)["per_repeat_s"] for t in (before, after)]
    per = segs[0] + segs[1]
    out["plain"] = {"median_s": statistics.median(per), "min_s": min(per), "max_s": max(per),
                    "per_repeat_s": per, "before_ray_median_s": statistics.median(segs[0]),
                    "after_ray_median_s": statistics.median(segs[1]), "threads": threads}
    base = out["plain"]["median_s"]
    out["ratios"] = {f"ray_{n}w_over_plain": out[f"ray_{n}w"]["median_s"] / base for n in workers}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m cmidd.bench_ray", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--im-size", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads of the plain loop = CPUs per worker")
    p.add_argument("--address", default=None)
    a = p.parse_args(argv)
    res = ray_speed(a.repeats, a.iterations, a.ipc, a.im_size, tuple(a.workers), threads=a.threads,
                    address=a.address)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

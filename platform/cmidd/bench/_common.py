"""What the bench suites share: timing summaries (of ``cmidd.hooks.StepClock``'s stamps), random data and the
machine's description."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import os
import platform as host
import statistics
from pathlib import Path
from typing import Any

import torch

from ..data import Dataset

# DC / DSA's (outer, inner) loop per IPC (Zhao et al.), for the gradient-matching variants of every suite.
GM_LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 50: (50, 10)}


def stats(values: list[float]) -> dict[str, float]:
    """``{"median", "min", "max", "n"}`` of ``values`` (seconds; the speed suite's schema)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def seconds_summary(per: list[float]) -> dict[str, Any]:
    """``{"median_s", "min_s", "max_s", "per_repeat_s"}`` of per-repeat seconds (the Ray suite's schema)."""
    return {"median_s": statistics.median(per), "min_s": min(per), "max_s": max(per), "per_repeat_s": per}


def segments(clock: list[float], warmup: int, repeats: int, iterations: int) -> dict[str, Any]:
    """Seconds per iteration of each timed segment of ``iterations`` steps after ``warmup`` steps, summarized.

    Args:
        clock: the time at the end of each step (``StepClock().stamps``, or rank 0's under Ray Train).
        warmup: untimed steps first.
        repeats: segments to time.
        iterations: steps per segment.
    """
    per = [(clock[warmup - 1 + (r + 1) * iterations] - clock[warmup - 1 + r * iterations]) / iterations
           for r in range(repeats)]
    return seconds_summary(per)


def random_dataset(num_classes: int = 10, per_class: int = 100, im_size: int = 32, channels: int = 3,
                   seed: int = 0, name: str = "random", test_per_class: int = 2) -> Dataset:
    """A normalized-looking random data set of the given shape (for timings only: they do not depend on pixels).

    Returns:
        A ``Dataset`` with ``num_classes * per_class`` train images (``[N, channels, im_size, im_size]``,
        standard normal) and ``num_classes * test_per_class`` test images; labels in class order.
    """
    gen = torch.Generator().manual_seed(seed)
    n = num_classes * per_class
    return Dataset(
        name=name, train_x=torch.randn(n, channels, im_size, im_size, generator=gen),
        train_y=torch.arange(num_classes).repeat_interleave(per_class),
        test_x=torch.randn(num_classes * test_per_class, channels, im_size, im_size, generator=gen),
        test_y=torch.arange(num_classes).repeat_interleave(test_per_class), num_classes=num_classes,
        channels=channels, im_size=im_size, mean=(0.0,) * channels, std=(1.0,) * channels,
        class_names=tuple(str(c) for c in range(num_classes)),
    )


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return host.processor() or host.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: date, versions, device, threads, CPU (and GPU)."""
    env = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": host.python_version(),
        "torch": torch.__version__, "ray": _version("ray"), "mlflow": _version("mlflow"),
        "optuna": _version("optuna"), "cmidd": _version("cmidd"), "device": str(device),
        "threads": torch.get_num_threads(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def machine() -> str:
    """One line for tables: architecture and CPU count (a shared machine's figures are noisy)."""
    return f"{host.machine()} {os.cpu_count()} CPUs (shared: figures are noisy)"

"""The distillation loop's callbacks (``Hooks``) and the step clock benchmarks time it with (``StepClock``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .synthetic import SyntheticSet


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

"""Simulated CMI studies where CMI does nothing (null arms): how often a verdict function says "helps" anyway.

Every arm, the zero arm included, draws its accuracies from one model (no arm has an effect):

    acc(arm, seed, step, e) = base(step) + shared[seed] + run[arm, seed] + wiggle[arm, seed, step] + eval noise

``shared`` is the part of a run fixed by its distillation seed (the same initial set in every arm), ``run`` the
arm's own drift, ``wiggle`` the checkpoint-to-checkpoint movement, the eval noise each of the ``num_eval`` eval
trainings' own; each eval accuracy is rounded to a whole number of the ``test_size`` test images, and a run's
point is the mean and population std over its eval seeds (as ``cmidd.study.load_runs`` reads them). Seeded
(``random.Random``), no global RNG.

Example:
    >>> rate = false_help_rate(verdict, DESIGNS["digits-2026-12-05"], Noise(), repeats=1000, seed=0)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .study import StudyRun

Verdict = Callable[[list[StudyRun], int], tuple[bool | None, str]]


@dataclass(frozen=True)
class Design:
    """A study's shape: which seeds each alpha runs, the checkpoints, the iteration count."""

    arms: dict[float, tuple[int, ...]]
    steps: tuple[int, ...]
    iterations: int


DESIGNS = {
    # the study run 2026-12-05 (docs/results/cmi_study_digits): alpha 0, 0.01, 0.05 with seed 0; 0 and 0.05 seed 1
    "digits-2026-12-05": Design({0.0: (0, 1), 0.01: (0,), 0.05: (0, 1)}, (500, 1000, 1500, 2000), 2000),
    # the pre-registered experiment of 2026-12-06 (jobs/study_cmi_digits_noise_ipc10.yaml)
    "noise-2026-12-06": Design({0.0: (0, 1, 2), 0.05: (0, 1, 2)}, (100, 250, 500, 1000), 1000),
}


@dataclass(frozen=True)
class Noise:
    """The null model's spreads (fractions of accuracy). Defaults: the digits study's size (per-run eval std
    0.13-0.35 pt, run means 0.1-0.4 pt apart, flat from iteration 500 on; docs/results/cmi_study_digits)."""

    base: float = 0.968
    rise: float = 0.0  # base(step) = base - rise * (1 - step / iterations): a curve still climbing
    shared: float = 0.0015
    run: float = 0.0015
    wiggle: float = 0.001
    eval: float = 0.0025
    num_eval: int = 3
    test_size: int = 359

    def scaled(self, k: float) -> "Noise":
        """Every spread times ``k`` (base and rise kept)."""
        return Noise(self.base, self.rise, k * self.shared, k * self.run, k * self.wiggle, k * self.eval,
                     self.num_eval, self.test_size)


def null_runs(design: Design, noise: Noise, rng: random.Random) -> list[StudyRun]:
    """One simulated study under the null: a ``StudyRun`` per (alpha, seed) of ``design``."""
    seeds = sorted({k for ks in design.arms.values() for k in ks})
    shared = {k: rng.gauss(0.0, noise.shared) for k in seeds}
    out = []
    for alpha, ks in design.arms.items():
        for k in ks:
            drift = rng.gauss(0.0, noise.run)
            curve = {}
            for s in design.steps:
                mu = noise.base - noise.rise * (1 - s / design.iterations) + shared[k] + drift
                mu += rng.gauss(0.0, noise.wiggle)
                accs = [round(min(1.0, max(0.0, mu + rng.gauss(0.0, noise.eval))) * noise.test_size)
                        / noise.test_size for _ in range(noise.num_eval)]
                m = sum(accs) / len(accs)
                curve[s] = (m, math.sqrt(sum((a - m) ** 2 for a in accs) / len(accs)))
            out.append(StudyRun(Path(f"sim/alpha{alpha:g}-s{k}"), alpha, k, 0.0, design.iterations, curve, None))
    return out


def false_help_rate(verdict: Verdict, design: Design, noise: Noise, repeats: int, seed: int) -> float:
    """The fraction of ``repeats`` simulated null studies on which ``verdict(runs, iterations)`` says helps."""
    rng = random.Random(seed)
    hits = sum(verdict(null_runs(design, noise, rng), design.iterations)[0] is True for _ in range(repeats))
    # (pass ``functools.partial(cmidd.study.verdict, detect=False)``: the same decisions, without the Monte Carlo
    # of the detectable effect in every line)
    return hits / repeats

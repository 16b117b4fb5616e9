"""The gain of a set over random-real, paired and with its spread: the draws to score and the arithmetic.

A set's score is the mean over its evaluation seeds (``evaluate(..., seed)``: the seeds of every (arch, index)
derive from ``seed``), and a real-initialized set started from one random-real draw (``RealPool.random_init``
with ``Generator().manual_seed(seed)``, the draw ``random_real_set(data, ipc, seed)`` makes). The gain compares
like with like:

- paired on the evaluation seeds: every random-real draw it is compared with was scored with the set's
  evaluation seed (``eval_seed``), so the nets' initializations and batches are the set's;
- over ``BASELINE_DRAWS`` (>= 3) random-real draws, the set's own initialization draw first (``own_draw``: its
  seed, for a real-initialized set without multi-formation; None otherwise): one draw is one sample of a
  spread that is large at small IPC;
- reported as mean +- std over the draws (sample std, n - 1) with n, in accuracy points.

Example:
    >>> draw_seeds(0)
    [0, 1, 2]
    >>> paired_gain(0.80, {0: 0.70, 1: 0.74, 2: 0.72}, own_draw=0)["gain"]
    8.0
"""

from __future__ import annotations

import statistics
from typing import Any

BASELINE_DRAWS = 3  # random-real draws a gain is measured over (>= 3: a spread, not one sample)


def draw_seeds(eval_seed: int, own_draw: int | None = None, n: int = BASELINE_DRAWS) -> list[int]:
    """The random-real draws to score with ``eval_seed``: ``own_draw`` (if any) first, then ``eval_seed``,
    ``eval_seed + 1``, ... until there are ``n`` distinct draws."""
    out = [] if own_draw is None else [int(own_draw)]
    k = int(eval_seed)
    while len(out) < n:
        if k not in out:
            out.append(k)
        k += 1
    return out


def spread(values: list[float]) -> dict[str, Any]:
    """{mean, std, n}: std the sample std (n - 1), None for fewer than 2 values; mean None for none."""
    n = len(values)
    return {"mean": statistics.fmean(values) if n else None,
            "std": statistics.stdev(values) if n > 1 else None, "n": n}


def paired_gain(value: float, draws: dict[int, float], own_draw: int | None = None) -> dict[str, Any]:
    """The gain of a set scoring ``value`` over the random-real ``draws`` ({draw seed: score}, all scored with
    the set's evaluation seeds), in accuracy points.

    Returns:
        {gain, gain_std, n, draws: [{draw, value, gain}], own_draw: whether the set's own initialization draw
        is among them}; gain_std None for fewer than 2 draws, gain None for none.
    """
    rows = [{"draw": d, "value": v, "gain": 100 * (value - v)} for d, v in sorted(draws.items())]
    s = spread([r["gain"] for r in rows])
    return {"gain": s["mean"], "gain_std": s["std"], "n": s["n"], "draws": rows,
            "own_draw": own_draw is not None and own_draw in draws}


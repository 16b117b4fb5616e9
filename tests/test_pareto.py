"""cmidd.pareto against a float64 brute force (numpy, every pair compared) on random points: ties on one
objective, exact duplicates, max/min mixes, 1 to 4 objectives; and ``best_within`` against a brute-force scan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmidd.pareto import best_within, dominates, pareto_front


def brute_front(points: np.ndarray, modes: tuple[str, ...]) -> list[int]:
    """Every pair in float64: i is on the front unless some j is >= in all objectives and > in one."""
    s = points.astype(np.float64) * np.array([1.0 if m == "max" else -1.0 for m in modes])
    ge = (s[:, None, :] >= s[None, :, :]).all(-1)  # ge[j, i]: j at least as good as i everywhere
    gt = (s[:, None, :] > s[None, :, :]).any(-1)
    dominated = (ge & gt).any(0)
    return [i for i in range(len(points)) if not dominated[i]]


def random_points(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Values on a coarse grid (many ties on single objectives) plus exact copies of some rows."""
    pts = rng.integers(0, 5, size=(n, k)).astype(np.float64) / 4 + rng.choice([0.0, 1e-9], size=(n, k))
    copies = rng.integers(0, n, size=max(1, n // 5))
    return np.concatenate([pts, pts[copies]])


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_front_equals_the_float64_brute_force(k):
    rng = np.random.default_rng(k)
    for trial in range(60):
        modes = tuple(rng.choice(["max", "min"], size=k))
        pts = random_points(rng, int(rng.integers(1, 40)), k)
        assert pareto_front(pts.tolist(), modes) == brute_front(pts, modes), (trial, modes)


def test_duplicates_ties_and_mixed_modes_by_hand():
    pts = [(0.9, 10), (0.9, 10), (0.9, 5), (0.8, 1), (0.8, 1), (0.7, 1), (0.9, 5)]
    assert pareto_front(pts, ("max", "min")) == [2, 3, 4, 6]  # (0.9, 5) twice, (0.8, 1) twice
    assert pareto_front(pts, ("min", "max")) == [0, 1, 5]  # the lowest first value (0.7, 1); the most images (x2)
    assert pareto_front([], ("max",)) == [] and pareto_front([(1.0,)] * 3, ("max",)) == [0, 1, 2]
    assert dominates((0.9, 5), (0.9, 10), ("max", "min")) and not dominates((0.9, 5), (0.9, 5), ("max", "min"))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="modes must be 'max' or 'min', but got 'up'"):
        pareto_front([(1.0,)], ("up",))
    with pytest.raises(ValueError, match="finite"):
        pareto_front([(math.nan, 1.0)], ("max", "min"))
    with pytest.raises(ValueError, match="2 values for 3 objectives"):
        pareto_front([(1.0, 2.0)], ("max", "min", "min"))


def test_best_within_a_budget_equals_a_brute_force_scan():
    rng = np.random.default_rng(7)
    for _ in range(200):
        modes = ("max", "min", "min")
        pts = random_points(rng, int(rng.integers(1, 25)), 3)
        limits = {1: float(rng.integers(0, 5)) / 4}
        if rng.random() < 0.5:
            limits[2] = 1.0
        got = best_within(pts.tolist(), modes, limits)
        ok = [i for i in range(len(pts)) if all(pts[i][k] <= v for k, v in limits.items())]
        if not ok:
            assert got is None
            continue
        # brute force: among ALL points within the budget, the best accuracy; the answer is a front point with it
        best_acc = max(pts[i][0] for i in ok)
        assert got in brute_front(pts, modes) and pts[got][0] == best_acc
        assert all(pts[got][k] <= v for k, v in limits.items())
        # and no point within the budget with that accuracy is cheaper on every cost
        assert not any(dominates(pts[i], pts[got], modes) for i in ok)


def test_every_budget_answer_is_on_the_front_and_budgets_are_monotone():
    pts = [(0.95, 50, 30.0), (0.93, 10, 8.0), (0.90, 10, 9.0), (0.85, 1, 2.0), (0.93, 10, 8.0)]
    modes = ("max", "min", "min")
    answers = [best_within(pts, modes, {1: k}) for k in (0, 1, 5, 10, 50)]
    assert answers == [None, 3, 3, 1, 0]  # (0.93, 10, 8) twice: the lower index
    accs = [pts[i][0] for i in answers if i is not None]
    assert accs == sorted(accs)  # a larger budget never answers worse
    assert best_within(pts, modes, {1: 50, 2: 10.0}) == 1

"""The Pareto front of a multi-objective search, and the best point under a budget: pure functions of numbers.

A point is a tuple of objective values, one per objective, each to maximize (``"max"``) or minimize (``"min"``).
``a`` dominates ``b`` when ``a`` is at least as good as ``b`` in every objective and strictly better in one. The
front is every point no other point dominates: equal points (duplicates) never dominate each other, so all copies
of a front point are on the front.

Example:
    >>> pareto_front([(0.9, 10), (0.8, 1), (0.7, 5), (0.9, 10)], ("max", "min"))
    [0, 1, 3]
    >>> best_within([(0.9, 10), (0.8, 1)], ("max", "min"), {1: 5})
    1
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

MODES = ("max", "min")


def _signed(point: Sequence[float], modes: Sequence[str]) -> tuple[float, ...]:
    """The point with every objective turned into one to maximize (a ``min`` objective negated)."""
    if len(point) != len(modes):
        raise ValueError(f"a point has {len(point)} values for {len(modes)} objectives")
    return tuple(float(v) if m == "max" else -float(v) for v, m in zip(point, modes))


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and strictly better in at least one."""
    sa, sb = _signed(a, modes), _signed(b, modes)
    return all(x >= y for x, y in zip(sa, sb)) and any(x > y for x, y in zip(sa, sb))


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """The indices (ascending) of the points no other point dominates.

    Args:
        points: one tuple of objective values per candidate (finite numbers).
        modes: ``"max"`` or ``"min"`` per objective.

    Raises:
        ValueError: an unknown mode, a point of the wrong length, or a value that is not finite.
    """
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"modes must be 'max' or 'min', but got {bad[0]!r}")
    signed = [_signed(p, modes) for p in points]
    if any(not math.isfinite(v) for s in signed for v in s):
        raise ValueError("every objective value must be a finite number")
    # sorted best-first on the signed values: a point can only be dominated by one before it in this order
    order = sorted(range(len(signed)), key=lambda i: signed[i], reverse=True)
    front: list[int] = []
    for i in order:
        s = signed[i]
        if not any(all(x >= y for x, y in zip(signed[j], s)) and signed[j] != s for j in front):
            front.append(i)
    return sorted(front)


def within(point: Sequence[float], modes: Sequence[str], limits: Mapping[int, float]) -> bool:
    """Whether ``point`` meets every budget in ``limits`` (objective index -> budget): a ``min`` objective's value
    <= it, a ``max`` objective's >= it."""
    return all((point[k] <= v) if modes[k] == "min" else (point[k] >= v) for k, v in limits.items())


def best_within(points: Sequence[Sequence[float]], modes: Sequence[str], limits: Mapping[int, float]) -> int | None:
    """The index of the best point on objective 0 among the front points within ``limits``, or None.

    Args:
        points, modes: as for ``pareto_front``.
        limits: objective index -> the budget: a ``min`` objective's value must be <= it (images per class,
            seconds), a ``max`` objective's >= it.

    Returns:
        The front point within every limit that is best on objective 0; on a tie there, the one best on the
        next objectives, then the lowest index. None when no front point is within the limits.
    """
    ok = [i for i in pareto_front(points, modes) if within(points[i], modes, limits)]
    if not ok:
        return None
    return min(ok, key=lambda i: (tuple(-x for x in _signed(points[i], modes)), i))

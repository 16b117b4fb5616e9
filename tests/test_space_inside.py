"""cmidd.ray._space._inside: whether an Optuna distribution can draw a value, from its public fields only."""

from __future__ import annotations

import pytest

od = pytest.importorskip("optuna.distributions")

from cmidd.ray._space import _inside  # noqa: E402


@pytest.mark.parametrize("dist,value,expected", [
    (od.FloatDistribution(1.0, 10.0, log=True), 5.0, True),
    (od.FloatDistribution(1.0, 10.0, log=True), 10.0, True),
    (od.FloatDistribution(1.0, 10.0, log=True), 50.0, False),
    (od.FloatDistribution(0.0, 1.0, step=0.25), 0.75, True),
    (od.FloatDistribution(0.0, 1.0, step=0.25), 0.3, False),
    (od.IntDistribution(1, 10, step=3), 4, True),
    (od.IntDistribution(1, 10, step=3), 5, False),
    (od.IntDistribution(1, 10), 0, False),
    (od.IntDistribution(0, 10), True, False),  # a bool is no int here
    (od.CategoricalDistribution(["a", 1]), 1, True),
    (od.CategoricalDistribution(["a", 1]), True, False),
    (od.CategoricalDistribution(["a", 1]), "b", False),
    (od.FloatDistribution(1.0, 10.0), "5", False),
])
def test_inside(dist, value, expected):
    assert _inside(dist, value) is expected

"""The paired gain test of the CMI study and of a search's zero-arm verdict: pure arithmetic on paired differences.

A gain counts when the mean paired difference is >= ``MIN_GAIN`` (0.5 pt), positive in every seed, and beyond
``critical(n, tests)`` standard errors of the mean: Student's t at one-sided ``LEVEL / tests`` (Bonferroni over
the tests a verdict looks at), never fewer than ``SE_FACTOR``. ``detectable`` is the true gain the test finds with
probability ``POWER``. ``cmidd.study`` (the study's verdict) and ``cmidd.search_report`` (a search's zero arm)
apply it.
"""

from __future__ import annotations

import functools
import math

MIN_GAIN = 0.005  # 0.5 pt: the smallest mean paired gain that counts (accuracies are fractions)
SE_FACTOR = 2.0  # ... and it must exceed this many standard errors of the paired mean, at least (``critical``)
LEVEL = 0.025  # one-sided false-"helps" level of the whole verdict, split over its tests (Bonferroni)
POWER = 0.8  # the detectable effect: the true gain the rule finds with this probability (``detectable``)


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (q > 0.5) of Student's t with ``df`` degrees of freedom: closed form for 1 and 2, else
    bisection on the CDF (Simpson's rule on the density, 4000 panels; tested against scipy to 1e-6)."""
    if df == 1:
        return math.tan(math.pi * (q - 0.5))
    if df == 2:
        return (2 * q - 1) / math.sqrt(2 * q * (1 - q))
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(t: float, panels: int = 4000) -> float:
        h = t / panels
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(panels + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < q:
        lo, hi = hi, 2 * hi
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2


@functools.lru_cache(maxsize=None)
def critical(n: int, tests: int = 1) -> float:
    """How many standard errors a paired mean of ``n`` seeds must exceed when the verdict looks at ``tests``
    tests: Student's t quantile at one-sided ``LEVEL / tests`` with n - 1 degrees of freedom (Bonferroni), and
    never fewer than SE_FACTOR (2). With 2 SE flat (issue 34's first wording) the null simulation said "helps"
    14-38% of the time at 2-4x the digits study's spread (``tools/study_null_sim.py``)."""
    return max(SE_FACTOR, t_quantile(1 - LEVEL / tests, n - 1))


def gain_test(diffs: tuple[float, ...] | list[float], tests: int = 1) -> bool:
    """Whether paired differences pass the gain test (``Paired.gain``)."""
    n = len(diffs)
    if n < 2:
        return False
    m = sum(diffs) / n
    se = math.sqrt(sum((d - m) ** 2 for d in diffs) / (n - 1) / n)
    return m >= MIN_GAIN and all(d > 0 for d in diffs) and m > critical(n, tests) * se


def detectable(sd: float, n: int, tests: int = 1, power: float = POWER, draws: int = 4000, seed: int = 0) -> float:
    """The smallest true mean gain (a fraction) the gain test passes with probability ``power`` when ``n`` paired
    differences are normal with std ``sd``: seeded Monte Carlo, bisected on the gain (the pass rate rises with
    it). inf below 2 seeds (the test needs a standard error)."""
    import random

    if n < 2:
        return math.inf
    if sd <= 0:
        return MIN_GAIN

    def rate(delta: float) -> float:
        rng = random.Random(seed)  # common random numbers: the rate is monotone in delta
        return sum(gain_test([rng.gauss(delta, sd) for _ in range(n)], tests) for _ in range(draws)) / draws

    lo, hi = MIN_GAIN, MIN_GAIN + 20 * sd
    if rate(lo) >= power:
        return lo
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if rate(mid) >= power else (mid, hi)
    return hi

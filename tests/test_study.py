"""The CMI study's report: pooled variances, the decision rule, the table (cmidd.study)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cmidd.study import StudyRun, arm_curves, clauses, table_md, verdict


def _run(alpha, seed, curve, lam=0.0, ratio=None):
    return StudyRun(Path(f"a{alpha}-s{seed}"), alpha, seed, lam, 2000, curve, ratio)


def test_arm_variance_pools_eval_seeds_and_distillation_seeds():
    runs = [_run(0.0, 0, {500: (0.90, 0.01)}), _run(0.0, 1, {500: (0.92, 0.03)})]
    p = arm_curves(runs)[0.0][500]
    # all six accuracies pooled: mean of the eval-seed variances + variance of the run means (by hand)
    assert p.mean == pytest.approx(0.91) and p.var == pytest.approx((0.01**2 + 0.03**2) / 2 + 0.01**2)
    assert p.runs == 2


def test_helps_when_an_alpha_beats_the_zero_arm_by_more_than_twice_the_pooled_std():
    zero = _run(0.0, 0, {500: (0.90, 0.01), 2000: (0.95, 0.01)})
    good = _run(0.05, 0, {500: (0.93, 0.01), 2000: (0.95, 0.01)})  # +3 pt at 500, 2 x pooled = 2 pt
    helps, line = verdict(arm_curves([zero, good]), 2000)
    assert helps is True and "alpha 0.05 beats the zero arm by +3.00 pt at iteration 500" in line


def test_helps_when_an_alpha_reaches_the_zero_arms_final_accuracy_in_half_the_iterations():
    zero = _run(0.0, 0, {500: (0.90, 0.05), 1000: (0.92, 0.05), 2000: (0.95, 0.05)})
    fast = _run(0.01, 0, {500: (0.90, 0.05), 1000: (0.951, 0.05), 2000: (0.95, 0.05)})  # within 2 std throughout
    helps, line = verdict(arm_curves([zero, fast]), 2000)
    assert helps is True and "reaches the zero arm's final accuracy (95.00%) at iteration 1000" in line
    late = _run(0.01, 0, {500: (0.90, 0.05), 1000: (0.94, 0.05), 1500: (0.951, 0.05), 2000: (0.95, 0.05)})
    helps, line = verdict(arm_curves([zero, late]), 2000)
    assert helps is False and line.startswith("CMI does not help: ")


def test_hurts_and_cannot_decide():
    zero = _run(0.0, 0, {2000: (0.95, 0.005)})
    bad = [_run(0.01, 0, {2000: (0.93, 0.005)}), _run(0.05, 0, {2000: (0.90, 0.005)})]
    helps, line = verdict(arm_curves([zero, *bad]), 2000)
    assert helps is False and "(it hurts)" in line and "best alpha 0.01 ends at 93.00%" in line
    assert verdict(arm_curves(bad), 2000) == (None, "cannot decide: the zero arm (alpha = 0) has no finished run")
    assert verdict(arm_curves([zero]), 2000)[0] is None


def test_table_lists_seeds_effective_lambdas_ratios_and_pooled_std():
    runs = [_run(0.0, 0, {500: (0.90, 0.01)}), _run(0.05, 0, {500: (0.93, 0.02)}, lam=1234.5, ratio=0.8123),
            _run(0.05, 1, {500: (0.95, 0.02)}, lam=1200.0, ratio=0.79)]
    lines = table_md(runs, arm_curves(runs)).splitlines()
    assert lines[0] == "| alpha | seeds | lambda_eff | cmi_ratio | acc @ 500 |"
    assert lines[2] == "| 0 | 0 | 0 | - | 90.00 +- 1.00 (n=1) |"
    sd = 100 * math.sqrt(0.02**2 + 0.01**2)
    assert lines[3] == f"| 0.05 | 0,1 | 1.23e+03 / 1.2e+03 | 0.812 / 0.79 | 94.00 +- {sd:.2f} (n=2) |"


def test_clauses_show_each_rule_with_its_numbers_and_when_the_zero_arm_is_as_fast():
    zero = _run(0.0, 0, {500: (0.90, 0.05), 1000: (0.96, 0.05), 2000: (0.95, 0.05)})  # peaks before its end
    fast = _run(0.05, 0, {500: (0.951, 0.05), 1000: (0.95, 0.05), 2000: (0.95, 0.05)})
    arms = arm_curves([zero, fast])
    assert verdict(arms, 2000)[0] is True  # the rule: alpha 0.05 reaches 95.00% at 500 <= 1000
    gain, speed = clauses(arms, 2000)
    assert gain == "gain clause: largest gain +5.10 pt (alpha 0.05, iteration 500) vs 2 x pooled std 10.00 pt: not met"
    assert speed == ("speed clause: first checkpoint at or above the zero arm's final 95.00%: alpha 0 at 1000, "
                     "alpha 0.05 at 500 (half the iterations: 1000)")
    assert clauses(arm_curves([fast]), 2000) == []

"""The CMI study's report: pooled variances, the decision rule, the table (cmidd.study)."""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path

import pytest

from cmidd.paired_test import POWER, SE_FACTOR, critical, detectable, gain_test, t_quantile
from cmidd.study import StudyRun, arm_curves, calib_md, clauses, paired, precondition, table_md, verdict
from cmidd.study_sim import DESIGNS, Noise, false_help_rate, null_runs


def _run(alpha, seed, curve, lam=0.0, ratio=None):
    return StudyRun(Path(f"a{alpha}-s{seed}"), alpha, seed, lam, 2000, curve, ratio)


def test_arm_variance_pools_eval_seeds_and_distillation_seeds():
    runs = [_run(0.0, 0, {500: (0.90, 0.01)}), _run(0.0, 1, {500: (0.92, 0.03)})]
    p = arm_curves(runs)[0.0][500]
    # all six accuracies pooled: mean of the eval-seed variances + variance of the run means (by hand)
    assert p.mean == pytest.approx(0.91) and p.var == pytest.approx((0.01**2 + 0.03**2) / 2 + 0.01**2)
    assert p.runs == 2


def _pair(alpha, zero_curves, alpha_curves):
    """Runs of the zero arm and of ``alpha``, seeds 0, 1, ... (one curve dict per seed)."""
    return ([_run(0.0, k, c) for k, c in enumerate(zero_curves)]
            + [_run(alpha, k, c) for k, c in enumerate(alpha_curves)])


def _flat(accs, step=2000):
    return [{step: (a, 0.0)} for a in accs]


def test_paired_differences_mean_and_standard_error_by_hand():
    (t,) = paired(_pair(0.05, _flat([0.90, 0.91, 0.92]), _flat([0.92, 0.92, 0.95])))
    assert t.seeds == (0, 1, 2) and t.diffs == pytest.approx((0.02, 0.01, 0.03))
    assert t.mean == pytest.approx(0.02) and t.se == pytest.approx(0.01 / math.sqrt(3))  # sample std 1 pt / sqrt 3
    assert critical(3, 1) == pytest.approx(4.302652729749462)  # t(0.975, 2 df): 4.30 x 0.577 = 2.48 pt > 2 pt
    assert t.gain(1) is False
    (t,) = paired(_pair(0.05, _flat([0.90, 0.91, 0.92]), _flat([0.92, 0.928, 0.942])))  # +2 / +1.8 / +2.2 pt
    assert t.gain(1) is True and t.gain(200) is False  # 4.30 x 0.115 = 0.50 pt; Bonferroni over 200: 0.5/0.115 < t


@pytest.mark.parametrize("df", [1, 2, 3, 5, 12, 40])
def test_t_quantile_matches_scipy(df):
    stats = pytest.importorskip("scipy.stats")
    for q in (0.975, 0.99375, 0.999):
        assert t_quantile(q, df) == pytest.approx(float(stats.t.ppf(q, df)), rel=1e-6)
    assert critical(41, 1) == pytest.approx(2.021075390306273)  # t(0.975, 40 df), still above the floor
    assert critical(200, 1) == SE_FACTOR  # t(0.975, 199 df) = 1.97: the floor of 2 SE holds


def test_each_condition_of_the_gain_test_can_fail_it():
    ok = [0.01, 0.011, 0.012]
    assert gain_test(ok) is True
    assert gain_test([0.004, 0.0045, 0.005]) is False  # mean 0.45 pt < 0.5 pt, however consistent
    assert gain_test([0.02, 0.02, -0.001]) is False  # one seed behind
    assert gain_test([0.001, 0.03, 0.002]) is False  # all positive, mean 1.1 pt, but within 4.30 SE
    assert gain_test([0.02]) is False  # one seed: no standard error


def test_helps_only_on_a_paired_gain_and_says_which_clause():
    zero = [{500: (0.90, 0.01), 1000: (0.93, 0.01), 2000: (0.95, 0.01)} for _ in range(3)]
    good = [{500: (0.93 + d, 0.01), 1000: (0.95 + d, 0.01), 2000: (0.95, 0.01)} for d in (0.0, 0.001, 0.002)]
    helps, line = verdict(_pair(0.05, zero, good), 2000)
    assert helps is True and line.startswith("CMI helps: alpha 0.05 is ahead of the zero arm by +3.10 pt")
    assert "at iteration 500" in line and "(3 tests)" in line
    # the speed clause: at 1000 (<= half) alpha is at 95.1% >= the zero arm's final 95% while the zero arm is at 93%
    assert "and faster: at iteration 1000 <= 1000 it is at 95.10%" in line and "the zero arm is at 93.00%" in line


DIGITS_2026_12_05 = {  # docs/results/cmi_study_digits/README.md, per run, % at 500 / 1000 / 1500 / 2000
    (0.0, 0): (96.56, 97.03, 96.75, 96.75), (0.0, 1): (96.94, 97.03, 96.84, 96.84),
    (0.01, 0): (96.75, 96.75, 96.75, 96.75), (0.05, 0): (97.03, 97.12, 97.03, 96.94),
    (0.05, 1): (96.84, 96.84, 96.84, 96.66)}


def test_speed_alone_no_longer_counts_the_digits_study_reissued():
    """The 2026-12-05 study: alpha 0.05 reaches the zero arm's final 96.80% at 500 by 0.14 pt, ahead with seed 0
    and behind with seed 1 (issue 26's rule: helps). Under the new rule: does not help."""
    runs = [_run(a, k, {s: (v / 100, 0.0) for s, v in zip((500, 1000, 1500, 2000), accs)})
            for (a, k), accs in DIGITS_2026_12_05.items()]
    helps, line = verdict(runs, 2000)
    assert helps is False and line.startswith("CMI does not help: no effect >= ")
    lines = clauses(runs, 2000)
    assert lines[4] == ("gain test, alpha 0.05 at 500: +0.19 pt (seeds 0,1: +0.47 / -0.10; SE 0.28 pt) vs >= 0.5 pt, "
                        "every seed > 0, > 50.92 SE: fails")  # 2 seeds, 4 tests (alpha 0.01 has 1 seed): t(1-0.025/4)
    assert lines[-1].startswith("speed clause: first checkpoint at or above the zero arm's final 96.80%: "
                                "alpha 0 at 1000, alpha 0.01 at never, alpha 0.05 at 500")


def test_no_effect_line_gives_the_detectable_effect_from_the_seed_spread():
    zero = [{2000: (0.95, 0.0)}] * 3
    same = [{2000: (0.95 + d, 0.0)} for d in (0.004, -0.002, -0.002)]  # paired sd 0.35 pt
    helps, line = verdict(_pair(0.05, zero, same), 2000)
    sd = 0.006 / math.sqrt(3)  # sample std of (+0.4, -0.2, -0.2) pt
    x = detectable(sd, 3, 1)
    assert helps is False and line.startswith(f"CMI does not help: no effect >= {100 * x:.2f} pt detectable")
    assert f"paired seed spread {100 * sd:.2f} pt over 3 seeds, 1 tests" in line
    # X by an independent simulation: the rule passes about 80% of the time at X, clearly less at 0.8 X
    rng = random.Random(123)
    def rate(delta):
        return sum(gain_test([rng.gauss(delta, sd) for _ in range(3)]) for _ in range(4000)) / 4000
    assert rate(x) == pytest.approx(POWER, abs=0.025) and rate(0.8 * x) < POWER - 0.05
    assert detectable(sd, 1) == math.inf


def test_hurts_and_cannot_decide():
    zero = [{2000: (0.95, 0.005)}] * 2
    bad = [{2000: (0.90, 0.005)}, {2000: (0.9001, 0.005)}]
    helps, line = verdict(_pair(0.05, zero, bad), 2000)
    assert helps is False and line.startswith("CMI hurts: at the final iteration 2000 every alpha > 0 is behind")
    only_alpha = [r for r in _pair(0.05, zero, bad) if r.alpha > 0]
    assert verdict(only_alpha, 2000) == (None, "cannot decide: the zero arm (alpha = 0) has no finished run")
    assert verdict([r for r in _pair(0.05, zero, bad) if r.alpha == 0], 2000)[0] is None
    one_seed = [_run(0.0, 0, {2000: (0.9, 0.0)}), _run(0.05, 0, {2000: (0.99, 0.0)})]
    helps, line = verdict(one_seed, 2000)
    assert helps is None and "shares 2 distillation seeds" in line


@pytest.mark.parametrize("design", sorted(DESIGNS))
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_null_studies_pass_the_rule_at_most_5_percent_of_the_time(design, scale):
    """Arms where CMI does nothing (cmidd.study_sim), 400 seeded studies per case: the rule says "helps" on <= 5%
    (issue 26's rule: 70-84% on the same simulation, tools/study_null_sim.py)."""
    rule = functools.partial(verdict, detect=False)
    for rise in (0.0, 0.01):
        rate = false_help_rate(rule, DESIGNS[design], Noise(rise=rise).scaled(scale), repeats=400, seed=1)
        assert rate <= 0.05


def test_a_real_gain_passes_the_rule():
    """The rule is not 'never': a +2 pt effect on every run of the 3-seed design is found most of the time."""
    d = DESIGNS["noise-2026-12-06"]
    rng = random.Random(7)
    hits = 0
    for _ in range(200):
        runs = [StudyRun(r.folder, r.alpha, r.seed, r.lam, r.iterations,
                         {s: (m + (0.02 if r.alpha > 0 else 0.0), sd) for s, (m, sd) in r.curve.items()}, None)
                for r in null_runs(d, Noise(), rng)]
        hits += verdict(runs, d.iterations, detect=False)[0] is True
    assert hits / 200 > 0.8


def test_table_lists_seeds_effective_lambdas_ratios_and_pooled_std():
    runs = [_run(0.0, 0, {500: (0.90, 0.01)}), _run(0.05, 0, {500: (0.93, 0.02)}, lam=1234.5, ratio=0.8123),
            _run(0.05, 1, {500: (0.95, 0.02)}, lam=1200.0, ratio=0.79)]
    lines = table_md(runs, arm_curves(runs)).splitlines()
    assert lines[0] == "| alpha | seeds | lambda_eff | cmi_ratio | acc @ 500 |"
    assert lines[2] == "| 0 | 0 | 0 | - | 90.00 +- 1.00 (n=1) |"
    sd = 100 * math.sqrt(0.02**2 + 0.01**2)
    assert lines[3] == f"| 0.05 | 0,1 | 1.23e+03 / 1.2e+03 | 0.812 / 0.79 | 94.00 +- {sd:.2f} (n=2) |"


def test_precondition_and_alpha_along_the_run_in_the_report(tmp_path):
    cal = ({"step": 0, "g_dd": 10.0, "g_cmi": 0.004, "lam": 125.0, "alpha_realised": 0.05},
           {"step": 25, "g_dd": 1.0, "g_cmi": 0.002, "lam": 120.0, "alpha_realised": 0.24},
           {"step": 975, "g_dd": 0.1, "g_cmi": 0.001, "lam": 10.0, "alpha_realised": 0.1})
    runs = [_run(0.0, 0, {1000: (0.9, 0.0)}, ratio=1.3), _run(0.0, 1, {1000: (0.9, 0.0)}, ratio=1.0),
            StudyRun(Path("a"), 0.05, 0, 125.0, 1000, {1000: (0.9, 0.0)}, 0.8, cal)]
    assert precondition(runs, 1.1) == (True, "precondition (zero arm's cmi_ratio > 1.1): met, mean 1.150 "
                                             "(1.300 / 1.000)")
    assert precondition(runs, 1.2)[0] is False and precondition(runs[2:], 1.1)[0] is None
    lines = calib_md(runs).splitlines()
    assert lines[0] == ("| run | alpha_real @ 0 | alpha_real @ 25 | alpha_real @ 100 | alpha_real @ 250 | "
                        "alpha_real @ 500 | alpha_real @ 975 | g_DD first -> last | g_CMI first -> last | "
                        "lambda first -> last |")
    assert lines[2] == "| alpha 0.05, seed 0 | 0.05 | 0.24 | 0.24 | 0.24 | 0.24 | 0.1 | 10 -> 0.1 | 0.004 -> 0.001 | 125 -> 10 |"
    assert calib_md(runs[:2]) == ""


def _tool():
    import importlib
    import sys

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tools"))
    try:
        return importlib.import_module("cmi_study"), root
    finally:
        sys.path.remove(str(root / "tools"))


def test_reverdict_reads_the_published_per_run_table():
    """tools/cmi_study.py reverdict: the README's per-run table gives the runs above, and so the same verdict."""
    tool, root = _tool()
    runs = tool.runs_from_table((root / "docs/results/cmi_study_digits/README.md").read_text())
    assert {(r.alpha, r.seed): tuple(round(100 * r.curve[s][0], 2) for s in (500, 1000, 1500, 2000))
            for r in runs} == DIGITS_2026_12_05
    assert verdict(runs, 2000)[1].startswith("CMI does not help: no effect >= 6.06 pt detectable")


def test_progress_reads_unfinished_arms_from_their_logs(tmp_path):
    """tools/cmi_study.py progress: evaluations so far (mean of the logged eval seeds) and the realised alpha."""
    tool, _ = _tool()
    (tmp_path / "alpha0-s0.log").write_text(
        "[cmidd] it 100/1000 loss_dd 1.0 (0.5 s/it), elapsed 1s, left ~1s\n"
        "[cmidd] eval ConvNetD2, 3 seeds trained by loop (eval.batched=auto on cpu): acc 0.9000 0.9100 0.9200\n"
        "[cmidd] it 250/1000 loss_dd 1.0 (0.5 s/it), elapsed 1s, left ~1s\n")
    (tmp_path / "alpha0.05-s0.log").write_text(
        "[cmidd] cmi at iteration 0: g_DD 10, g_CMI 0.002, lambda 250 -> realised alpha 0.05\n"
        "[cmidd] it 100/1000 loss_dd 1.0 (0.5 s/it), elapsed 1s, left ~1s\n"
        "[cmidd] eval ConvNetD2, 3 seeds trained by loop (eval.batched=auto on cpu): acc 0.9300 0.9300 0.9300\n"
        "[cmidd] cmi at iteration 100: g_DD 0.5, g_CMI 0.0002, lambda 200 -> realised alpha 0.08 (recalibrated)\n")
    table = tool.progress([tmp_path], [100, 250, 500, 1000]).splitlines()
    assert table[2] == "| alpha0-s0 | 250 | 91.00 | - | - | - | - |"
    assert table[3] == "| alpha0.05-s0 | 100 | 93.00 | - | - | - | 0: 0.05, 100: 0.08 |"
    runs = tool.runs_from_logs([tmp_path], [100, 250, 500, 1000], 1000)
    assert [(r.alpha, r.curve[100][0]) for r in runs] == [(0.0, pytest.approx(0.91)), (0.05, pytest.approx(0.93))]
    calib = tool.calib_from_logs([tmp_path]).splitlines()
    assert calib[3] == "| alpha0.05-s0 | 100 | 0.5 | 0.0002 | 200 | 0.08 | 0.1 |"  # 250 x 0.0002 / 0.5

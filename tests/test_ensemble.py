"""Ensemble evaluation: vmap-batched seeds == sequential seeds, ECE and ensemble accuracy against references."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from cmidd.augment import DSAParams
from cmidd.config import EvalCfg
from cmidd.ensemble import BATCHED, ensemble_scores, expected_calibration_error, train_seeds
from cmidd.evaluate import ENSEMBLE, EvalResult, evaluate
from cmidd.nets import create_net
from cmidd.report import results_table

HP = dict(epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4, batch=16, lr_decay=0.1)


def _train(digits, arch: str, batched: bool, dsa_params=None, **kw):
    x, y = digits.train_x[:40], digits.train_y[:40]  # 3 steps per epoch (16, 16, 8): a ragged last batch

    def build():
        return create_net(arch, digits.channels, digits.num_classes, digits.im_size, **kw)

    return train_seeds(build, [3, 11, 12], x, y, dsa_params=dsa_params, batched=batched, **HP)


@pytest.mark.parametrize("dsa_on", [False, True])
def test_vmap_batched_seeds_equal_sequential_runs(digits, dsa_on):
    dsa_params = DSAParams(strategy="crop_scale_rotate") if dsa_on else None
    batched, mode_b = _train(digits, "ConvNetD1", True, dsa_params, width=16)
    looped, mode_l = _train(digits, "ConvNetD1", False, dsa_params, width=16)
    assert mode_b == BATCHED and mode_l.startswith("loop")
    for nb, nl in zip(batched, looped):
        sb, sl = nb.state_dict(), nl.state_dict()
        assert sb.keys() == sl.keys()
        for k in sb:
            torch.testing.assert_close(sb[k], sl[k], rtol=1e-4, atol=1e-5, msg=k)
    # the seeds really differ (a bug sharing one net or one data order would pass the check above too)
    w = [dict(n.named_parameters())["classifier.weight"] for n in batched]
    assert not torch.allclose(w[0], w[1])


def test_batchnorm_nets_fall_back_to_the_loop_and_say_so(digits):
    nets, mode = _train(digits, "ConvNetD1", True, norm="batch", width=8)
    assert mode.startswith("loop (BatchNorm2d")
    again, _ = _train(digits, "ConvNetD1", False, norm="batch", width=8)
    for a, b in zip(nets, again):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(va, vb), k


def _ece_reference(probs: torch.Tensor, labels: torch.Tensor, bins: int) -> float:
    """ECE by the definition, in float64 Python loops."""
    p = probs.double().tolist()
    n, total = len(p), 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i in range(n) if (lo < max(p[i]) <= hi) or (b == 0 and max(p[i]) == 0.0)]
        if not members:
            continue
        conf = sum(max(p[i]) for i in members) / len(members)
        acc = sum(p[i].index(max(p[i])) == int(labels[i]) for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
    return total


@pytest.mark.parametrize("bins", [1, 5, 15])
def test_ece_equals_a_float64_reference(bins):
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 10, generator=gen), dim=1)
    labels = torch.randint(0, 10, (500,), generator=gen)
    assert expected_calibration_error(probs, labels, bins) == pytest.approx(_ece_reference(probs, labels, bins),
                                                                              abs=1e-6)
    # a perfectly calibrated case: confidence 1 and always right -> 0
    onehot = torch.nn.functional.one_hot(labels, 10).float()
    assert expected_calibration_error(onehot, labels, bins) == 0.0


def test_ensemble_accuracy_and_ece_by_hand():
    # two models, three points, two classes; the averaged softmax decides where they disagree
    m1 = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    m2 = torch.tensor([[0.7, 0.3], [0.8, 0.2], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 1])
    # mean: [0.8, 0.2] -> 0 (right); [0.6, 0.4] -> 0 (right); [0.4, 0.6] -> 1 (right) => 3/3
    # model 2 alone would get point 3 wrong, model 1 alone point 2.
    acc, ece = ensemble_scores(torch.stack([m1, m2]), labels, bins=15)
    assert acc == 1.0
    # bins of 1/15: 0.8 -> (0.7333, 0.8]; 0.6 -> (0.5333, 0.6] holds two points, both right
    assert ece == pytest.approx((1 / 3) * (1 - 0.8) + (2 / 3) * (1 - 0.6))
    labels2 = torch.tensor([1, 0, 1])  # first point now wrong
    acc2, _ = ensemble_scores(torch.stack([m1, m2]), labels2)
    assert acc2 == pytest.approx(2 / 3)


def test_cross_arch_std_is_the_spread_of_the_per_seed_means():
    """``acc_std/cross_arch_mean``: seed i's mean over archs, then the population std over seeds."""
    res = EvalResult(accs={"A": [0.9, 0.8, 0.7], "B": [0.5, 0.6, 0.9]})
    per_seed = [0.7, 0.7, 0.8]
    m = res.metrics()
    assert m["acc_std/cross_arch_mean"] == pytest.approx(statistics.pstdev(per_seed), abs=1e-12)
    assert m["acc/cross_arch_mean"] == pytest.approx(statistics.fmean(per_seed), abs=1e-12)
    one = EvalResult(accs={"A": [0.9, 0.8, 0.7]})
    assert one.metrics()["acc_std/cross_arch_mean"] == pytest.approx(one.std("A"), abs=1e-12) and one.std("A") > 0
    assert EvalResult(accs={"A": [0.9]}).cross_arch_std == 0.0


def test_evaluate_reports_the_ensemble_and_the_training_mode(digits):
    x, y = digits.train_x[:30], digits.train_y[:30]
    cfg = EvalCfg(archs=["ConvNetD1", "LeNet"], num_eval=2, epochs=1, batch=16, dsa=False, batched="vmap")
    res = evaluate(x, y, digits, cfg, seed=0)
    m = res.metrics()
    assert 0 <= m["acc/ensemble"] <= 1 and 0 <= m["ece/ensemble"] <= 1
    assert res.modes["ConvNetD1"] == BATCHED
    rows = res.rows("s")
    assert rows[-1]["arch"] == ENSEMBLE and rows[-1]["n"] == 2 * len(cfg.archs)
    table = results_table(rows)
    assert "ensemble" in table.splitlines()[0] and "ece" in table
    mean_cell = table.splitlines()[2].split()[-4]  # "mean" excludes the ensemble row
    assert float(mean_cell) == pytest.approx(100 * res.cross_arch_mean, abs=0.051)
    # the same evaluation with the sequential loop gives the same accuracies; ensemble off drops the metrics
    loop = evaluate(x, y, digits, cfg.model_copy(update={"batched": "loop", "ensemble": False}), seed=0)
    assert "acc/ensemble" not in loop.metrics() and loop.rows("s")[-1]["arch"] != ENSEMBLE
    for a in cfg.archs:
        assert loop.accs[a] == pytest.approx(res.accs[a], abs=0.02)
    assert not math.isnan(m["acc/cross_arch_mean"])
    # per-class recall, averaged over the models: its class-size-weighted mean is the mean accuracy
    sizes = torch.bincount(digits.test_y, minlength=10).double()
    weighted = float((torch.tensor(res.class_acc, dtype=torch.float64) * sizes).sum() / sizes.sum())
    assert weighted == pytest.approx(statistics.fmean(a for v in res.accs.values() for a in v), abs=1e-6)


def test_bench_reports_both_timings_and_equal_nets():
    from cmidd.bench.ensemble import ensemble_speed

    r = ensemble_speed(seeds=2, n_images=20, epochs=1, arch="ConvNetD1", repeats=1)
    assert r["mode"] == BATCHED and r["n_images"] == 20 and r["seeds"] == 2
    assert r["batched_s"] > 0 and r["sequential_s"] > 0
    assert r["speedup"] == pytest.approx(r["sequential_s"] / r["batched_s"])
    assert r["max_abs_diff"] < 1e-4  # the two timed variants trained the same nets

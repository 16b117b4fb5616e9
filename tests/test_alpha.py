"""cmi.alpha (the scale-free lambda), the effective lambda everywhere it is shown, and cmi_ratio."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import brute_norms, stop_at, tiny_distill

from cmidd.cmi import cmi_emp, proxy_log_probs
from cmidd.config import parse_job
from cmidd.data import RealPool
from cmidd.distill import CHECKPOINT, distill, effective_lambda, iteration_generator
from cmidd.errors import ConfigError
from cmidd.evaluate import baseline_set
from cmidd.lam import LAM_KEY, RATIO_KEY, fmt_lam, lam_effective, lam_of
from cmidd.methods import MethodContext, build_method
from cmidd.nets import create_net
from cmidd.runner import cmi_metrics
from cmidd.training import seeded_net


def _proxy(arch: str, im_size: int = 8, **kw):
    return seeded_net(lambda: create_net(arch, 1, 10, im_size, **kw), 0, "cpu").eval().requires_grad_(False)


# -- config --------------------------------------------------------------------------------------------------


def test_alpha_and_lam_both_set_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cmi.lam and cmi.alpha: at most one may be > 0.*lam=10, alpha=0.05") as e:
        parse_job(tiny_distill(tmp_path, cmi__lam=10.0, cmi__alpha=0.05), "job.yaml")
    assert "\n" not in str(e.value) and "job.yaml" in str(e.value)


@pytest.mark.parametrize("field", ["alpha", "lam", "calibrate_draws"])
def test_negative_weight_is_rejected_naming_the_field(tmp_path, field):
    with pytest.raises(ConfigError, match=rf"cmi.{field}: .*(-1)"):
        parse_job(tiny_distill(tmp_path, **{f"cmi__{field}": -1}), "job.yaml")


def test_alpha_zero_or_lam_zero_is_cmi_off(tmp_path):
    off = parse_job(tiny_distill(tmp_path, cmi__alpha=0.0, cmi__lam=0.0), "job.yaml")
    on = parse_job(tiny_distill(tmp_path, cmi__alpha=0.05, cmi__lam=0.0), "job.yaml")
    assert not off.cmi.on and on.cmi.on and on.cmi.calibrate_draws == 8


# -- the calibrated lambda -------------------------------------------------------------------------------------


def test_lam_effective_equals_alpha_times_the_brute_force_gradient_norm_ratio(tmp_path, digits):
    job = parse_job(tiny_distill(tmp_path, ipc=3, cmi__alpha=0.05, cmi__calibrate_draws=3), "job.yaml")
    proxy = _proxy("ConvNetD1", width=16)
    g_dd, g_cmi = brute_norms(job, digits, proxy, 3)
    lam = effective_lambda(job, digits, [proxy])
    assert lam == pytest.approx(0.05 * g_dd / g_cmi, rel=1e-5)
    assert lam != pytest.approx(0.05, rel=0.5)  # a real rescaling, not alpha passed through


def test_alpha_gives_the_same_relative_pull_on_proxy_feature_sizes_and_data_sets(tmp_path, digits):
    """At the first image step (draw 0 = iteration 0) ||lam_eff * grad CMI|| / ||grad L_DD|| is alpha whatever
    the proxy and the data set (digits 8x8 with two proxy feature sizes, mnist5k 28x28), although the CMI
    gradients differ by large factors (a hand-set lambda would not transfer between them)."""
    from cmidd.data import load_dataset

    mnist = load_dataset("mnist5k")
    lams, g_cmis = [], []
    for data, proxy in ((digits, _proxy("ConvNetD1", width=8)), (digits, _proxy("ConvNetD2", width=64)),
                        (mnist, _proxy("ConvNetD1", 28, width=16))):
        job = parse_job(tiny_distill(tmp_path, ipc=3, data__name=data.name, cmi__alpha=0.2,
                                     cmi__calibrate_draws=1), "job.yaml")
        g_dd, g_cmi = brute_norms(job, data, proxy, 1)
        lam = effective_lambda(job, data, [proxy])
        assert lam * g_cmi / g_dd == pytest.approx(0.2, rel=1e-5)
        lams.append(lam)
        g_cmis.append(g_cmi)
    assert max(g_cmis) / min(g_cmis) > 1.5 and max(lams) / min(lams) > 1.5


def test_lam_set_passes_through_and_off_is_zero(tmp_path, digits):
    assert effective_lambda(parse_job(tiny_distill(tmp_path, cmi__lam=7.0)), digits, None) == 7.0
    assert effective_lambda(parse_job(tiny_distill(tmp_path)), digits, None) == 0.0
    with pytest.raises(ConfigError, match="cmi.alpha > 0 needs proxies"):
        effective_lambda(parse_job(tiny_distill(tmp_path, cmi__alpha=0.1)), digits, None)


def test_the_loop_steps_with_the_calibrated_lambda_and_records_it(tmp_path, digits):
    """An alpha run equals a lam run at lam = lam_eff (same images bit for bit), and its manifest says lam_eff."""
    proxy = _proxy("ConvNetD1", width=16)
    a_job = parse_job(tiny_distill(tmp_path, method__iterations=2, cmi__alpha=0.5, cmi__calibrate_draws=2))
    lam = effective_lambda(a_job, digits, [proxy])
    a_set, _ = distill(a_job, digits, [proxy])
    l_set, _ = distill(parse_job(tiny_distill(tmp_path, method__iterations=2, cmi__lam=lam)), digits, [proxy])
    plain, _ = distill(parse_job(tiny_distill(tmp_path, method__iterations=2)), digits)
    assert a_set.meta["lam"] == pytest.approx(lam) and a_set.meta["alpha"] == 0.5
    assert torch.equal(a_set.images, l_set.images) and not torch.equal(a_set.images, plain.images)


def test_alpha_resume_is_exact_and_keeps_the_checkpoints_lambda(tmp_path, digits):
    proxy = _proxy("ConvNetD1", width=16)
    over = {"method__iterations": 4, "cmi__alpha": 0.5, "cmi__calibrate_draws": 2, "output__checkpoint_every": 1}
    full, _ = distill(parse_job(tiny_distill(tmp_path, **over)), digits, [proxy])

    work = tmp_path / "w"
    work.mkdir()
    job = parse_job(tiny_distill(tmp_path, **over))
    distill(job, digits, [proxy], hooks=stop_at(2), workdir=work)
    state = torch.load(work / CHECKPOINT, weights_only=True)
    assert state["lam"] == pytest.approx(full.meta["lam"])
    resumed, h = distill(job, digits, [proxy], workdir=work, resume=True, lam=123.0)  # the checkpoint's wins
    assert h.step == [1, 2, 3, 4] and resumed.sha256() == full.sha256()


# -- the one effective-lambda function ------------------------------------------------------------------------


def test_lam_effective_rules():
    assert lam_effective(10.0, cmi_on=False) == 0.0  # a trial of the zero arm
    assert lam_effective(0.0, 0.05, cmi_on=False, measured=99.0) == 0.0
    assert lam_effective("0.0", "0.0") == 0.0  # MLflow params are strings
    assert lam_effective("10.0", "0.0") == 10.0
    assert lam_effective(0.0, 0.05, measured="1234.5") == 1234.5
    assert math.isnan(lam_effective(0.0, 0.05))  # alpha, nothing reported: unknown
    assert lam_effective(5.0, measured=0.0) == 0.0  # IPC 1: CMI vanished, the loop reported 0


def test_trial_lambda_is_zero_for_cmi_on_false_and_measured_otherwise():
    base = {"cmi.lam": 0.0, "cmi.alpha": 0.01}
    assert lam_of({"cmi.alpha": 0.05, "cmi_on": False}, {LAM_KEY: 321.0}, base) == 0.0
    assert lam_of({"cmi.alpha": 0.05, "cmi_on": True}, {LAM_KEY: 321.0}, base) == 321.0
    assert lam_of({"cmi.lam": 30.0, "cmi_on": "False"}, {}, {}) == 0.0
    assert lam_of({}, {}, {"cmi.lam": 30.0}) == 30.0  # not searched: the base job's
    assert fmt_lam(1234.5678) == "1.23e+03" and fmt_lam(0.0) == "0" and fmt_lam(12.345) == "12.3"
    assert fmt_lam(float("nan")) == "-"


# -- cmi_ratio -------------------------------------------------------------------------------------------------


def test_cmi_ratio_of_the_random_real_set_itself_is_one(tmp_path, digits):
    job = parse_job(tiny_distill(tmp_path, ipc=3, cmi__alpha=0.1), "job.yaml")
    proxies = [_proxy("ConvNetD1", width=16), _proxy("ConvNetD2", width=16)]
    x, y = baseline_set("random-real", digits, 3, job.seed)
    m = cmi_metrics(x, y, digits, job, proxies)
    assert m[RATIO_KEY] == pytest.approx(1.0, abs=1e-12) and m["cmi_final"] > 0
    # a set with one image repeated per class has CMI 0: ratio 0; noise has a different CMI: ratio != 1
    x_same = x.view(10, 3, *x.shape[1:])[:, :1].expand(10, 3, *x.shape[1:]).reshape(x.shape)
    assert cmi_metrics(x_same, y, digits, job, proxies)[RATIO_KEY] == pytest.approx(0.0, abs=1e-6)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert cmi_metrics(noise, y, digits, job, proxies)[RATIO_KEY] != pytest.approx(1.0, rel=0.05)


# -- search spaces over alpha ---------------------------------------------------------------------------------


def test_alpha_space_loads_with_its_zero_arm_and_trials_switch_cmi_off():
    from pathlib import Path

    from cmidd.config import ZERO_ARM, load_search
    from cmidd.config import trial_job
    from cmidd.ray.tune import optuna_space

    cfg = load_search(Path(__file__).resolve().parents[1] / "search_spaces" / "digits_dmcmi_alpha.yaml")
    spec = cfg.params["cmi.alpha"]
    assert spec.zero_arm and spec.kind == "loguniform" and cfg.base.cmi.lam == 0
    dists, points = optuna_space(cfg)
    assert dists["cmi.alpha"].log and points[0][ZERO_ARM] is False and points[0]["cmi.alpha"] == 0.05
    zero = trial_job(cfg, points[0], "t0")
    assert not zero.cmi.on and zero.cmi.alpha == 0.0 and zero.cmi.lam == 0.0
    on = trial_job(cfg, {**points[0], ZERO_ARM: True, "cmi.alpha": 0.01}, "t1")
    assert on.cmi.on and on.cmi.alpha == 0.01 and on.cmi.lam == 0.0


def test_alpha_space_with_a_base_lambda_is_one_clear_error(tmp_path):
    import yaml

    from cmidd.config import load_search

    space = {"name": "s", "base": tiny_distill(tmp_path, cmi__lam=10.0, eval__every=2),
             "params": {"cmi.alpha": {"loguniform": [0.01, 0.1], "zero_arm": True}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(ConfigError, match=r"params.cmi.alpha: .*at most one may be > 0.*searched value 0.01"):
        load_search(path)


# -- the CLI ---------------------------------------------------------------------------------------------------


def test_cli_run_with_alpha_writes_lam_effective_and_cmi_ratio(tmp_path, capsys):
    import json
    from pathlib import Path

    from cmidd import cli

    job = Path(__file__).resolve().parents[1] / "jobs" / "distill_dmcmi_digits_ipc10.yaml"
    sets = ["cmi.alpha=0.05", "method.iterations=2", "proxies.epochs=1", "cmi.calibrate_draws=2",
            f"proxies.dir={tmp_path / 'proxies'}", "eval.archs=[ConvNetD2]", "eval.epochs_by_arch={}",
            "eval.epochs=2", "eval.num_eval=1", f"output.dir={tmp_path / 'job'}"]
    assert cli.main(["run", str(job), "--no-track", *(a for s in sets for a in ("--set", s))]) == 0
    metrics = json.loads((tmp_path / "job" / "result.json").read_text())["metrics"]
    manifest = json.loads((tmp_path / "job" / "synthetic" / "manifest.json").read_text())
    lam = metrics[LAM_KEY]
    assert lam > 0 and lam != 0.05 and manifest["lam"] == pytest.approx(lam)
    assert metrics[RATIO_KEY] == pytest.approx(metrics["cmi_final"] / metrics["cmi_random_real"])
    assert 0 < metrics[RATIO_KEY] < 10
    assert f"{LAM_KEY}: {lam:.4g}" in capsys.readouterr().out
    from cmidd.study import load_runs  # the study's report reads real run folders

    (run,) = load_runs(tmp_path)
    assert (run.alpha, run.seed, run.lam, run.iterations) == (0.05, 0, lam, 2)
    assert run.curve == {2: (metrics["acc/cross_arch_mean"], metrics["acc_std/cross_arch_mean"])}
    assert run.cmi_ratio == metrics[RATIO_KEY]


def test_a_set_weight_replaces_the_files_other_spelling():
    from cmidd.config import load_job

    job = Path(__file__).resolve().parents[1] / "jobs" / "distill_dmcmi_digits_ipc10.yaml"  # cmi: {lam: 10}
    assert (load_job(job).cmi.lam, load_job(job).cmi.alpha) == (10, 0)
    assert (load_job(job, ["cmi.alpha=0.05"]).cmi.lam, load_job(job, ["cmi.alpha=0.05"]).cmi.alpha) == (0, 0.05)
    assert load_job(job, ["cmi.alpha=0"]).cmi.lam == 10  # alpha 0 is "no alpha": the file's lambda stays
    study = Path(__file__).resolve().parents[1] / "jobs" / "study_cmi_digits_ipc10.yaml"  # cmi: {lam: 0, alpha: 0.05}
    assert (load_job(study, ["cmi.lam=100"]).cmi.lam, load_job(study, ["cmi.lam=100"]).cmi.alpha) == (100, 0)


def test_cli_both_weights_exit_2(tmp_path, capsys):
    from pathlib import Path

    from cmidd import cli

    job = Path(__file__).resolve().parents[1] / "jobs" / "distill_dmcmi_digits_ipc10.yaml"
    assert cli.main(["run", str(job), "--no-track", "--set", "cmi.alpha=0.05", "--set", "cmi.lam=10",
                     "--set", f"output.dir={tmp_path / 'job'}"]) == 2
    err = capsys.readouterr().err
    assert "cmi.lam and cmi.alpha: at most one may be > 0" in err and "lam=10, alpha=0.05" in err
    assert not (tmp_path / "job").exists()


# -- tracking: param, tags, registry version, cmidd runs ------------------------------------------------------


def test_tracked_alpha_run_shows_its_effective_lambda_everywhere(tmp_path, monkeypatch, digits, capsys):

    from cmidd import cli
    from cmidd import tracking as T

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = parse_job(tiny_distill(tmp_path, name="tiny-alpha", method__iterations=2, cmi__alpha=0.05,
                                 cmi__calibrate_draws=2, eval__every=1))
    t = T.tracked_run(job, uri, data=digits)
    lam = t.result.metrics[LAM_KEY]
    assert lam > 0 and lam != 0.05
    c = T.client_for(uri)
    run = c.get_run(t.run_id)
    assert run.data.params[LAM_KEY] == repr(lam) and run.data.params["cmi.alpha"] == "0.05"
    assert run.data.tags["lambda"] == fmt_lam(lam) and run.data.tags[LAM_KEY] == repr(lam)
    assert run.data.metrics[LAM_KEY] == pytest.approx(lam) and RATIO_KEY in run.data.metrics
    assert [m.value for m in c.get_metric_history(t.run_id, LAM_KEY)] == pytest.approx([lam, lam])  # eval + end
    mv = c.get_model_version(t.versions[0]["name"], str(t.versions[0]["version"]))
    assert mv.tags[LAM_KEY] == repr(lam) and mv.tags["lambda"] == fmt_lam(lam) and mv.tags["cmi.alpha"] == "0.05"
    assert float(mv.tags[RATIO_KEY]) == pytest.approx(t.result.metrics[RATIO_KEY], rel=1e-5)
    plain = T.tracked_run(parse_job(tiny_distill(tmp_path / "p", name="tiny-plain", method__iterations=2)), uri,
                          data=digits)
    rows = {r["name"]: r for r in T.list_runs(uri)}
    assert rows["tiny-alpha"]["lambda"] == fmt_lam(lam) and rows["tiny-plain"]["lambda"] == "0"
    assert c.get_run(plain.run_id).data.params[LAM_KEY] == "0.0"
    capsys.readouterr()
    assert cli.main(["runs", "--tracking-uri", uri]) == 0
    assert fmt_lam(lam) in capsys.readouterr().out


# -- the search report: table, verdict and plot show effective lambdas ------------------------------------------


def _trial(tid, state, metric, std, params, lam=None, step=8):
    row = {"trial_id": tid, "run_id": f"r{tid}", "state": state, "step": step if state == "finished" else 2,
           "metric": metric, "std": std, "params": params}
    return row if lam is None else {**row, "lam_effective": lam}


def test_zero_arm_verdict_says_why_when_the_only_cmi_trial_was_stopped_by_asha(tmp_path):
    from cmidd.config import ZERO_ARM, load_search
    from cmidd.search_report import summary_table, zero_arm_verdict

    cfg = load_search(Path(__file__).resolve().parents[1] / "search_spaces" / "digits_dmcmi_alpha.yaml")
    rows = [_trial("z", "finished", 0.9, 0.01, {"cmi.alpha": 0.05, ZERO_ARM: False}),
            _trial("c", "stopped", 0.5, 0.02, {"cmi.alpha": 0.2, ZERO_ARM: True}, lam=1234.5)]
    line = zero_arm_verdict({"trials": rows}, cfg)
    assert line == "zero arm: cannot decide: no lambda > 0 trial finished (1 stopped early by ASHA: c at step 2)"
    rows[1] = {**rows[1], "state": "finished", "step": 8}
    line = zero_arm_verdict({"trials": rows}, cfg)
    assert "best lambda > 0 (1.23e+03)" in line and "is worse than lambda = 0" in line
    table = summary_table({"trials": rows}, "acc", cfg).splitlines()
    assert table[0].split()[:6] == ["trial", "state", "step", "acc", "std", "lambda"]
    assert "cmi.lam" not in table[0] and ZERO_ARM not in table[0] and "cmi.alpha" in table[0]
    assert table[1].split()[5] == "0" and table[2].split()[5] == "1.23e+03"  # the zero arm's sampled alpha is moot


def test_lambda_plot_is_symlog_with_zero_labelled_and_seed_std_error_bars():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.container import ErrorbarContainer

    from cmidd.config import ZERO_ARM
    from cmidd.search_report import lambda_figure

    rows = [_trial("z", "finished", 0.90, 0.01, {"cmi.lam": 500.0, ZERO_ARM: False}),
            _trial("a", "finished", 0.88, 0.02, {"cmi.lam": 50.0, ZERO_ARM: True}),
            _trial("b", "stopped", 0.70, 0.03, {"cmi.lam": 5000.0, ZERO_ARM: True})]
    fig = lambda_figure(None, rows, "acc")
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog"
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "0\n(off)" and "50" in labels and "5e+03" in labels and "500" not in labels
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2  # finished, stopped
    finished_x = sorted(bars[0].lines[0].get_xdata())
    assert finished_x == [0.0, 50.0]  # the zero arm at 0, not at its sampled lambda
    seg = bars[0].lines[2][0].get_segments()
    assert sorted(round(float(s[1, 1] - s[0, 1]), 6) for s in seg) == [0.02, 0.04]  # +- std: 2 std tall
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_a_plain_run_reports_cmi_ratio_when_its_proxies_are_already_trained(tmp_path, digits):
    from cmidd.runner import run_job

    plain = parse_job(tiny_distill(tmp_path, method__iterations=1))
    assert RATIO_KEY not in run_job(plain, data=digits).metrics  # no trained proxies: nothing is trained to measure
    assert not (tmp_path / "proxies").exists()
    run_job(parse_job(tiny_distill(tmp_path, method__iterations=1, cmi__lam=1.0)), data=digits)  # trains them
    m = run_job(plain, data=digits).metrics
    assert m[LAM_KEY] == 0.0 and m[RATIO_KEY] == pytest.approx(m["cmi_final"] / m["cmi_random_real"])


def test_the_loops_initial_real_set_is_the_random_real_baseline(digits):
    """So cmi_ratio starts at exactly 1 for a set distilled from real images."""
    from cmidd.formation import init_stored

    pool = RealPool(digits.train_x, digits.train_y, digits.num_classes)
    x0, y0 = init_stored(pool, 4, 1, torch.Generator().manual_seed(3))  # as distill_state.setup_run draws it (seed 3)
    x, y = baseline_set("random-real", digits, 4, 3)
    assert torch.equal(x0, x) and torch.equal(y0, y)


# -- recalibration (cmi.recalibrate_every) ---------------------------------------------------------------------


def test_recalibrate_every_rules(tmp_path):
    with pytest.raises(ConfigError, match=r"cmi.recalibrate_every > 0 needs cmi.alpha > 0.*lam=5, alpha=0"):
        parse_job(tiny_distill(tmp_path, cmi__lam=5.0, cmi__recalibrate_every=2), "job.yaml")
    with pytest.raises(ConfigError, match=r"recalibrate_every is implemented for method dm on one worker.*'gm'"):
        parse_job(tiny_distill(tmp_path, method__name="gm", cmi__alpha=0.1, cmi__recalibrate_every=2), "job.yaml")
    with pytest.raises(ConfigError, match=r"cmi.recalibrate_ema: .*1"):
        parse_job(tiny_distill(tmp_path, cmi__alpha=0.1, cmi__recalibrate_every=2, cmi__recalibrate_ema=1.0))


def test_recalibration_is_the_ema_of_the_brute_force_ratio_and_resumes_exactly(tmp_path, digits):
    """3 iterations, recalibrated before iteration 2 (0-based): lam = ema * lam0 + (1 - ema) * alpha * ratio, the
    ratio computed by hand at the images after 2 steps (= those of a plain lam0 run), with iteration 2's net and
    the recalibration stream's batch."""
    from cmidd.lam import RECAL_STREAM

    proxy = _proxy("ConvNetD1", width=16)
    over = {"ipc": 3, "method__iterations": 3, "cmi__alpha": 0.3, "cmi__calibrate_draws": 1,
            "cmi__recalibrate_every": 2, "cmi__recalibrate_ema": 0.5, "output__checkpoint_every": 1}
    job = parse_job(tiny_distill(tmp_path, **over))
    lam0 = effective_lambda(job, digits, [proxy])
    full, _ = distill(job, digits, [proxy])
    two, _ = distill(parse_job(tiny_distill(tmp_path, ipc=3, method__iterations=2, cmi__lam=lam0)), digits, [proxy])
    pool = RealPool(digits.train_x, digits.train_y, digits.num_classes)
    m = build_method(MethodContext(job.method, job.net, pool, 1, 10, 8, torch.device("cpu")))
    m.begin_iteration(iteration_generator(job.seed, 2))
    gen = iteration_generator(job.seed, RECAL_STREAM + 2)
    x = two.images.clone().requires_grad_(True)
    g_dd = float(torch.autograd.grad(m.loss(x, two.labels, gen), x)[0].norm())
    x = two.images.clone().requires_grad_(True)
    g_cmi = float(torch.autograd.grad(cmi_emp(proxy_log_probs(proxy, x), two.labels, 10), x)[0].norm())
    expected = 0.5 * lam0 + 0.5 * 0.3 * g_dd / g_cmi
    assert full.meta["lam"] == pytest.approx(expected, rel=1e-5) and expected != pytest.approx(lam0, rel=1e-3)

    work = tmp_path / "w"
    work.mkdir()
    hooks = stop_at(2)
    distill(job, digits, [proxy], hooks=hooks, workdir=work)
    assert [m[LAM_KEY] for m in hooks.seen] == pytest.approx([lam0, lam0])  # the curve (MLflow) before the recalibration
    resumed, _ = distill(job, digits, [proxy], workdir=work, resume=True)
    assert resumed.sha256() == full.sha256() and resumed.meta["lam"] == pytest.approx(expected, rel=1e-9)


def test_ipc1_reports_lambda_zero_because_cmi_vanishes(tmp_path, digits):
    proxy = _proxy("ConvNetD1", width=16)
    for weight in ({"cmi__lam": 10.0}, {"cmi__alpha": 0.1}):
        job = parse_job(tiny_distill(tmp_path, ipc=1, method__iterations=1, **weight))
        assert effective_lambda(job, digits, [proxy]) == 0.0
        with pytest.warns(UserWarning, match=r"ipc=1: .*cmi.lam \(alpha\) has no effect"):
            synset, _ = distill(job, digits, [proxy])
        assert synset.meta["lam"] == 0.0


# -- alpha along the run (cmi.measure_every) -------------------------------------------------------------------


def test_measurement_records_the_brute_force_norms_and_changes_nothing(tmp_path, digits):
    """measure_every 2 over 3 iterations: measurements at 0 and 2, each the image-gradient norms by hand at the
    images before that iteration's update (iteration it's net, the recalibration stream's batch), the realised
    alpha lam * g_CMI / g_DD; the set is bit-identical to an unmeasured run (the measurement draws from its own
    generator), and the step metrics carry the same numbers."""
    from cmidd.lam import MEASURED, RECAL_STREAM

    proxy = _proxy("ConvNetD1", width=16)
    base = {"ipc": 3, "method__iterations": 3, "cmi__alpha": 0.3, "cmi__calibrate_draws": 1}
    job = parse_job(tiny_distill(tmp_path, **base, cmi__measure_every=2))
    lam = effective_lambda(job, digits, [proxy])
    hooks = stop_at(99)
    measured, hist = distill(job, digits, [proxy], hooks=hooks)
    plain, _ = distill(parse_job(tiny_distill(tmp_path, **base)), digits, [proxy])
    assert measured.sha256() == plain.sha256()
    assert [c["step"] for c in hist.calib] == [0, 2]
    pool = RealPool(digits.train_x, digits.train_y, digits.num_classes)
    for c in hist.calib:
        if c["step"] == 0:
            x0, y = pool.random_init(job.ipc, torch.Generator().manual_seed(job.seed))
        else:
            two, _ = distill(parse_job(tiny_distill(tmp_path, ipc=3, method__iterations=2, cmi__lam=lam)), digits,
                             [proxy])
            x0, y = two.images, two.labels
        m = build_method(MethodContext(job.method, job.net, pool, 1, 10, 8, torch.device("cpu")))
        m.begin_iteration(iteration_generator(job.seed, c["step"]))
        gen = iteration_generator(job.seed, RECAL_STREAM + c["step"])
        x = x0.clone().requires_grad_(True)
        g_dd = float(torch.autograd.grad(m.loss(x, y, gen), x)[0].norm())
        x = x0.clone().requires_grad_(True)
        g_cmi = float(torch.autograd.grad(cmi_emp(proxy_log_probs(proxy, x), y, 10), x)[0].norm())
        assert (c["g_dd"], c["g_cmi"]) == pytest.approx((g_dd, g_cmi), rel=1e-5)
        assert c["lam"] == pytest.approx(lam) and c["alpha_realised"] == pytest.approx(lam * g_cmi / g_dd, rel=1e-5)
        assert [hooks.seen[c["step"]][k] for k in MEASURED] == pytest.approx([c["g_dd"], c["g_cmi"],
                                                                             c["alpha_realised"]])
    assert hist.calib[0]["alpha_realised"] != pytest.approx(hist.calib[1]["alpha_realised"], rel=1e-3)
    assert not any(MEASURED[0] in m for i, m in enumerate(hooks.seen) if i not in (0, 2))


def test_measure_and_recalibrate_are_no_ops_with_cmi_off_and_eval_at_adds_checkpoints(tmp_path, digits):
    """A study's zero arm shares its job file: recalibrate_every / measure_every with lam = alpha = 0 run plain DM
    (nothing measured, no lambda curve); eval.at evaluates at those iterations beside eval.every."""
    job = parse_job(tiny_distill(tmp_path, method__iterations=5, cmi__recalibrate_every=2, cmi__measure_every=2,
                                 eval__every=2, eval__at=[3]))
    hooks = stop_at(99)
    _, hist = distill(job, digits)
    assert hist.calib == [] and not any(LAM_KEY in m for m in hooks.seen)
    assert [e["step"] for e in hist.evals] == [2, 3, 4]
    with pytest.raises(ConfigError, match=r"cmi.measure_every is implemented on one worker only"):
        parse_job(tiny_distill(tmp_path, cmi__alpha=0.1, cmi__measure_every=2, scaling={"workers": 2}))

"""Search (Ray Tune + Optuna + ASHA, tracked in MLflow): the space file's validation, a real search on a local
Ray, an interrupted-and-resumed search through the CLI, and a search on a two-node local cluster.

Every search is tiny: 8x8 digits, ConvNetD1 width 16, IPC 2, 8 DM iterations with an evaluation every 2
(1 net, 2 epochs), proxies convnet-x1 pre-trained 1 epoch; one trial takes ~3 s, most of it Tune's actor start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
pytest.importorskip("optuna")
pytest.importorskip("mlflow")

from cmidd.config import ZERO_ARM, load_search  # noqa: E402
from cmidd.errors import ConfigError  # noqa: E402

from conftest import tiny_distill  # noqa: E402

CLI = str(Path(sys.executable).with_name("cmidd"))
ROOT = Path(__file__).resolve().parents[1]
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true",
       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONPATH": str(ROOT / "platform")}


def space(tmp_path: Path, **search) -> dict:
    """A tiny search mapping: lambda (with its zero arm) and lr_img; ASHA rungs at steps 2 and 4 of 8."""
    base = tiny_distill(tmp_path, method__iterations=8, eval__every=2, eval__dsa=False, method__dsa=False)
    return {
        "name": "search-tiny",
        "base": base,
        "params": {"cmi.lam": {"loguniform": [1.0, 100.0], "zero_arm": True},
                   "method.lr_img": {"loguniform": [0.01, 10.0]}},
        "search": {"num_samples": 6, "seed": 0, "asha": {"grace_period": 2, "reduction_factor": 2}, **search},
        "register_top_k": 2,
        "storage": str(tmp_path / "store"),
    }


def write(tmp_path: Path, mapping: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(mapping))
    return path


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """An empty MLflow sqlite database (creating the tables takes ~7 s), copied for each test's store."""
    from cmidd.tracking import client_for

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    client_for(f"sqlite:///{path}").search_experiments()
    return path


def store(tmp_path: Path, template_db: Path) -> str:
    shutil.copy(template_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def child_runs(uri: str, experiment: str, client=None):
    from cmidd.tracking import client_for

    client = client or client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None, []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "search"]
    return parents, [r for r in runs if r.data.tags.get("kind") == "distill"]


# -- the space file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits_dmcmi", "cifar10_dmcmi", "cifar100_dmcmi"])
def test_shipped_spaces_load(name):
    cfg = load_search(ROOT / "search_spaces" / f"{name}.yaml")
    assert cfg.params["cmi.lam"].zero_arm and cfg.params["cmi.lam"].kind == "loguniform"
    assert {"ipc", "proxies.set", "method.lr_img"} <= set(cfg.params)
    if name.startswith("cifar"):
        assert cfg.params["cmi.lam"].loguniform[1] == 80000.0  # the paper's largest lambda


def test_method_space_loads_and_chooses_methods():
    cfg = load_search(ROOT / "search_spaces" / "digits_methods.yaml")
    assert cfg.params["method.name"].choice == ["dm", "gm"] and cfg.params["cmi.lam"].zero_arm
    # the base carries gm's loops beside dm's fields; each trial keeps its own method's fields only
    from cmidd.config import trial_job_raw

    assert cfg.base.method.name == "dm" and not hasattr(cfg.base.method, "outer_loop")
    gm = trial_job_raw(cfg, {"method.name": "gm"})["method"]
    dm = trial_job_raw(cfg, {"method.name": "dm"})["method"]
    assert gm["outer_loop"] == 10 and gm["inner_loop"] == 10 and "outer_loop" not in dm


@pytest.mark.parametrize("params, base_method, rule", [
    # a field searched over methods of which one lacks it
    ({"method.name": {"choice": ["dm", "gm"]}, "method.outer_loop": {"int": [1, 3]}}, {},
     "params.method.outer_loop: must name a field of every searched method (dm, gm)"),
    ({"method.precision": {"choice": ["bf16"]}, "method.name": {"choice": ["gm"]}}, {},
     "must name a field of every searched method (gm)"),
    # a base field no searched method has (a typo, or a method not searched)
    ({"method.name": {"choice": ["dm", "gm"]}}, {"syn_steps": 3}, "method.syn_steps: unknown field for method dm, gm"),
    ({"cmi.lam": {"uniform": [1, 2]}}, {"outer_loop": 3}, "method.outer_loop: unknown field for method dm"),
])
def test_method_space_fields_resolve_through_the_method_union(tmp_path, params, base_method, rule):
    mapping = space(tmp_path)
    mapping["params"] = params
    mapping["base"]["method"].update(base_method)
    with pytest.raises(ConfigError, match=re.escape(rule)):
        load_search(write(tmp_path, mapping))
    if not base_method:  # the same space over one method that has the field loads
        params = {k: v for k, v in params.items() if k != "method.name"}
        mapping["params"] = {**params, "method.name": {"choice": ["gm", "idc"] if "method.outer_loop" in params
                                                       else ["dm"]}}
        load_search(write(tmp_path, mapping))


def test_base_as_path_and_overrides(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "base.yaml").write_text(yaml.safe_dump(tiny_distill(tmp_path, eval__every=2)))
    mapping = space(tmp_path)
    mapping["base"] = "jobs/base.yaml"
    cfg = load_search(write(tmp_path, mapping), ["search.num_samples=3", "base.method.iterations=6"])
    assert cfg.search.num_samples == 3 and cfg.base.method.iterations == 6 and cfg.max_t == 6


@pytest.mark.parametrize("params, rule", [
    ({"cmi.lamda": {"uniform": [0, 1]}}, "params.cmi.lamda: must name a field of the distill job"),
    ({"cmi": {"uniform": [0, 1]}}, "params.cmi: must name a field"),
    ({"ipc": {"choice": []}}, "params.ipc: choice must list at least one value"),
    ({"method.lr_img": {"uniform": [2.0, 1.0]}}, "params.method.lr_img: uniform: lo < hi must hold, but got [2.0, 1"),
    ({"cmi.lam": {"loguniform": [0.0, 10.0]}}, "lo > 0 must hold"),
    ({"ipc": {"int": [1, 3], "choice": [1]}}, "exactly one of loguniform, uniform, int, choice"),
    ({"ipc": {"int": [1, 3], "zero_arm": True}}, "zero_arm is only allowed on cmi.lam"),
    ({"ipc": {"choice": [2, 0]}}, "ipc: Input should be greater than or equal to 1 (got 0) [searched value 0]"),
    ({"method.name": {"choice": ["dm", "nope"]}}, "[searched value 'nope']"),
    ({"cmi.lam": {"uniform": [1, 2], "bogus": 1}}, "params.cmi.lam.bogus: unknown field"),
])
def test_bad_params_name_file_field_rule_value(tmp_path, params, rule):
    mapping = space(tmp_path)
    mapping["params"] = params
    path = write(tmp_path, mapping)
    with pytest.raises(ConfigError) as e:
        load_search(path)
    assert str(path) in str(e.value) and rule in str(e.value)


def test_bad_search_settings(tmp_path):
    for over, rule in [(["search.num_samples=0"], "search.num_samples: Input should be greater than or equal to 1"),
                       (["search.asha.reduction_factor=1"], "search.asha.reduction_factor"),
                       (["base.eval.every=0"], "search.asha: needs intermediate accuracies"),
                       (["base.ipc=0"], "ipc: Input should be greater than or equal to 1"),
                       (["base=7"], "base: must be a path to a distill job YAML or a mapping")]:
        with pytest.raises(ConfigError) as e:
            load_search(write(tmp_path, space(tmp_path)), over)
        assert rule in str(e.value), (over, str(e.value))


def test_ipc_1_with_lambda_warns(tmp_path):
    mapping = space(tmp_path)
    mapping["params"]["ipc"] = {"choice": [1, 2]}
    with pytest.warns(UserWarning, match="at IPC 1 CMI is identically 0"):
        load_search(write(tmp_path, mapping))


def test_cli_bad_space_exit_2(tmp_path):
    mapping = space(tmp_path)
    mapping["params"] = {"ipc": {"choice": []}}
    out = subprocess.run([CLI, "search", str(write(tmp_path, mapping))], capture_output=True, text=True,
                         env={**os.environ, **ENV}, timeout=60)
    assert out.returncode == 2 and "params.ipc: choice must list at least one value" in out.stderr
    assert not (tmp_path / "store").exists()  # nothing written


def test_zero_arm_is_enqueued_first():
    from cmidd.ray.tune import optuna_space

    cfg = load_search(ROOT / "search_spaces" / "digits_dmcmi.yaml")
    dists, points = optuna_space(cfg)
    assert points == [{"cmi.lam": 10, ZERO_ARM: False, "ipc": 10, "proxies.set": "convnet-x1", "method.lr_img": 1.0}]
    assert dists[ZERO_ARM].choices == (True, False)
    from cmidd.config import trial_job

    assert trial_job(cfg, points[0], "t0").cmi.lam == 0.0  # the zero arm runs plain DM
    assert trial_job(cfg, {**points[0], ZERO_ARM: True}, "t1").cmi.lam == 10


def _row(tid, state, metric, lam, on=True, lr=1.0):
    return {"trial_id": tid, "run_id": f"r{tid}", "state": state, "step": 8 if state == "finished" else 2,
            "metric": metric, "params": {"cmi.lam": lam, ZERO_ARM: on, "method.lr_img": lr}}


def test_study_summary_and_plots_degenerate_cases(tmp_path):
    """Importances need two finished trials with different values; plots draw lambda = 0 at the left edge."""
    from cmidd.ray.tune import study_summary
    from cmidd.search_report import plots, summary_table

    cfg = load_search(write(tmp_path, space(tmp_path)))
    assert study_summary(cfg, [], tmp_path) == ["optuna_study.csv"]  # no finished trial
    same = [_row("a", "finished", 0.5, 10.0), _row("b", "finished", 0.5, 20.0), _row("c", "stopped", 0.1, 3.0)]
    # one distinct value: no importances (Optuna's history plot only)
    assert study_summary(cfg, same, tmp_path) == ["optuna_study.csv", "optuna_history.png"]
    rows = [_row("a", "finished", 0.5, 10.0, lr=0.1), _row("b", "finished", 0.7, 50.0, on=False, lr=2.0),
            _row("c", "finished", 0.6, 2.0, lr=5.0), _row("d", "stopped", 0.1, 3.0)]
    files = study_summary(cfg, rows, tmp_path)
    assert files == ["optuna_study.csv", "optuna_history.png", "optuna_importances.json", "optuna_importances.png"]
    for png in ("optuna_history.png", "optuna_importances.png"):  # Optuna's own plots (its matplotlib backend)
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    imp = json.loads((tmp_path / "optuna_importances.json").read_text())
    assert set(imp) <= {"cmi.lam", ZERO_ARM, "method.lr_img"} and sum(imp.values()) == pytest.approx(1.0)
    assert plots(cfg, rows, tmp_path) == ["accuracy_vs_lambda.png", "accuracy_vs_ipc.png"]
    table = summary_table({"trials": rows}, "acc").splitlines()
    assert [line.split()[0] for line in table[1:]] == ["b", "c", "a", "d"]  # best first


@pytest.mark.parametrize("z_acc, z_std, c_std, verdict", [
    # 3 eval seeds: SE = sqrt(z_std^2 / 2 + c_std^2 / 2); best of 2 lambda > 0 trials: t(1 - 0.025 / 2, 4 df) = 3.50
    (0.90, 0.005, 0.005, ", so lambda > 0 beats lambda = 0 (>= 0.5 pt and > 3.50 x SE 0.0050"),
    (0.90, 0.01, 0.01, ": no effect >= 0.0434 detectable (>= 0.5 pt and > 3.50 x SE 0.0100"),  # +3 pt < 3.5 pt
    (0.90, 0.03, 0.01, ": no effect >= 0.0969 detectable (>= 0.5 pt and > 3.50 x SE 0.0224"),
    (0.96, 0.005, 0.005, ", so lambda > 0 is worse than lambda = 0 (>= 0.5 pt and > 3.50 x SE 0.0050"),
    (0.925, 0.0001, 0.0001, ": no effect >= 0.0050 detectable"),  # +0.5 pt - 1e-12: under the 0.5 pt floor
])
def test_zero_arm_verdict_weighs_the_gap_against_the_seed_spread(tmp_path, z_acc, z_std, c_std, verdict):
    from cmidd.search_report import summary_table, zero_arm_verdict

    cfg = load_search(write(tmp_path, space(tmp_path)))
    three = {"eval.num_eval": 3}
    rows = [{**_row("z", "finished", z_acc, 5.0, on=False), "std": z_std},
            {**_row("c", "finished", 0.93 - (1e-12 if z_acc == 0.925 else 0), 700.0), "std": c_std},
            {**_row("w", "finished", 0.80, 9000.0), "std": 0.0},
            {**_row("s", "stopped", 0.99, 100.0), "std": 0.0}]  # stopped: not a finished arm
    rows = [{**r, "params": {**r["params"], **three}} for r in rows]
    line = zero_arm_verdict({"trials": rows}, cfg)
    assert verdict in line and "(700)" in line and f"{0.93 - z_acc:+.4f}" in line
    assert "eval seeds only (one distillation per trial); best of 2 lambda > 0 trials, Bonferroni" in line
    one = [{**r, "params": {**r["params"], "eval.num_eval": 1}} for r in rows]
    assert zero_arm_verdict({"trials": one}, cfg).endswith(": cannot weigh it: one eval seed per trial, so no spread")
    assert zero_arm_verdict({"trials": rows[1:]}, cfg) == (  # no lambda = 0 trial: it says why
        "zero arm: cannot decide: no lambda = 0 trial finished (none ran: the space has no zero_arm and the base "
        "job's CMI is on)")
    table = summary_table({"trials": rows}, "acc").splitlines()
    assert table[0].split()[3:5] == ["acc", "std"] and f"{z_std:.4f}" in "".join(table)


def test_zero_arm_verdict_compares_the_arms_at_one_ipc_only(tmp_path):
    """An IPC search: the zero arm's best trial at IPC 5 must not be set against the best lambda > 0 trial at IPC
    2 (an IPC gap, not a CMI effect). The verdict compares within the best lambda > 0 trial's IPC, or says it
    cannot decide; the Bonferroni count stays every lambda > 0 trial it was picked from."""
    from cmidd.search_report import zero_arm_verdict

    raw = space(tmp_path)
    raw["params"]["ipc"] = {"choice": [2, 5]}
    cfg = load_search(write(tmp_path, raw))

    def row(tid, acc, lam, ipc, on=True):
        r = {**_row(tid, "finished", acc, lam, on=on), "std": 0.002}
        return {**r, "params": {**r["params"], "ipc": ipc, "eval.num_eval": 3}}

    rows = [row("z5", 0.95, 5.0, 5, on=False), row("c2", 0.90, 700.0, 2), row("c5", 0.89, 50.0, 5)]
    line = zero_arm_verdict({"trials": rows}, cfg)
    assert line == ("zero arm: cannot decide: no lambda = 0 trial finished at ipc 2 (the best lambda > 0 trial's; "
                    "lambda = 0 finished at ipc 5): the arms compare at the same ipc only")
    rows.append(row("z2", 0.85, 5.0, 2, on=False))  # now a zero-arm trial at the same IPC: +5 pt there
    line = zero_arm_verdict({"trials": rows}, cfg)
    assert line.startswith("zero arm at ipc 2: lambda = 0 acc/cross_arch_mean 0.8500") and "+0.0500" in line
    assert ", so lambda > 0 beats lambda = 0" in line and "best of 2 lambda > 0 trials" in line
    # without the IPC in the space, the same rows would have compared 0.95 with 0.90: "worse"
    assert "z5" not in line and "0.9500" not in line


def test_bench_curve_is_best_so_far_against_cumulative_seconds():
    from cmidd.bench.search import best_so_far

    assert best_so_far([(2.0, 0.5), (1.0, None), (3.0, 0.7), (1.5, 0.6)]) == [(2.0, 0.5), (3.0, 0.5), (6.0, 0.7),
                                                                        (7.5, 0.7)]


# -- a real search ---------------------------------------------------------------------------------------


def test_search_asha_mlflow_registry_best(tmp_path, template_db, ray_local, capsys):
    """6 trials on a local Ray: ASHA stops some; the parent/child runs, the registered top-2, ``cmidd best``."""
    from cmidd import cli
    from cmidd.app import run_search
    from cmidd.names import TAG_STOPPED, TAG_TRIAL
    from cmidd.tracking import best_set, client_for

    uri = store(tmp_path, template_db)
    cfg = load_search(write(tmp_path, space(tmp_path)))
    summary = run_search(cfg, uri, progress=False)

    rows = {r["trial_id"]: r for r in summary["trials"]}
    assert len(rows) == 6
    stopped = [t for t, r in rows.items() if r["state"] == "stopped"]
    finished = [t for t, r in rows.items() if r["state"] == "finished"]
    assert stopped and finished and len(stopped) + len(finished) == 6
    assert all(rows[t]["step"] < 8 for t in stopped) and all(rows[t]["step"] == 8 for t in finished)
    assert any(r["params"][ZERO_ARM] is False for r in rows.values())  # the lambda = 0 arm ran

    parents, children = child_runs(uri, "search-tiny")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.info.run_id == summary["parent_run_id"]
    assert (tmp_path / "store" / "parent_run_id").read_text() == parent.info.run_id
    assert len(children) == 6 and all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    by_trial = {c.data.tags[TAG_TRIAL]: c for c in children}
    assert set(by_trial) == set(rows)
    for t in stopped:  # killed by ASHA: marked, not left RUNNING
        assert by_trial[t].info.status == "KILLED" and by_trial[t].data.tags[TAG_STOPPED] == "true"
    for t in finished:
        assert by_trial[t].info.status == "FINISHED"
        assert by_trial[t].data.metrics["acc/cross_arch_mean"] == pytest.approx(rows[t]["metric"])
    zero = [c for c in children if c.data.params["cmi.lam"] == "0.0"]
    assert zero and all(c.data.tags["proxy_set"] == "none" for c in zero)
    # effective lambdas only: 0 for the zero arm whatever cmi.lam it sampled, in rows, child runs and the parent
    from cmidd.lam import fmt_lam
    from cmidd.search_report import summary_table

    for r in rows.values():
        assert r["lam_effective"] == (0.0 if r["params"][ZERO_ARM] is False else r["params"]["cmi.lam"])
    for t in finished:
        assert by_trial[t].data.tags["lambda"] == fmt_lam(rows[t]["lam_effective"])
        assert float(by_trial[t].data.params["cmi.lam_effective"]) == pytest.approx(rows[t]["lam_effective"])
    head = summary_table(summary, "acc/cross_arch_mean", cfg).splitlines()[0].split()
    assert "lambda" in head and "cmi.lam" not in head and ZERO_ARM not in head

    best = summary["best"]
    assert best["metric"] == max(rows[t]["metric"] for t in finished)
    assert parent.data.params["best.trial_id"] == best["trial_id"]
    assert parent.data.params["best.method.lr_img"] == str(best["params"]["method.lr_img"])
    assert float(parent.data.params["best.cmi.lam_effective"]) == pytest.approx(best["lam_effective"])
    assert "best.cmi.lam" not in parent.data.params and f"best.{ZERO_ARM}" not in parent.data.params
    assert parent.data.metrics["trials/stopped"] == len(stopped)
    client = client_for(uri)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"space.yaml", "base_job.json", "trials.json", "optuna_study.csv", "accuracy_vs_lambda.png",
            "accuracy_vs_ipc.png", "comparison.png"} <= arts  # comparison: the best trials x archs vs random-real

    # the TPE sampler's study lives in an RDB storage in the search's folder (optuna-dashboard opens it)
    import optuna

    from cmidd.ray.tune import study_storage

    assert summary["optuna_study"] == {"name": cfg.name, "storage": study_storage(cfg)}
    assert study_storage(cfg) == f"sqlite:///{tmp_path / 'store' / 'optuna.db'}"
    study = optuna.load_study(study_name=cfg.name, storage=study_storage(cfg))
    assert len(study.trials) == 6 and any(t.params.get(ZERO_ARM) is False for t in study.trials)
    told = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]  # stopped ones too
    assert all(any(v == pytest.approx(rows[t]["metric"]) for v in told) for t in finished)

    versions = client.search_model_versions("name = 'distilled-digits-ipc2'")
    top2 = sorted(finished, key=lambda t: -rows[t]["metric"])[:2]
    assert sorted(v.run_id for v in versions) == sorted(by_trial[t].info.run_id for t in top2)
    assert not {v.run_id for v in versions} & {by_trial[t].info.run_id for t in stopped}

    got = best_set("digits", 2, uri=uri)
    assert got["run_id"] == best["run_id"] and got["alias"] == "champion"
    capsys.readouterr()
    assert cli.main(["best", "--dataset", "digits", "--ipc", "2", "--tracking-uri", uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == best["run_id"]


def test_trials_with_two_ray_train_workers(tmp_path, template_db, ray_local):
    """scaling.workers 2: each trial's driver takes 0.1 CPU and starts Ray Train; ASHA stops one of them."""
    from cmidd.app import run_search
    from cmidd.names import TAG_STOPPED

    uri = store(tmp_path, template_db)
    mapping = space(tmp_path, num_samples=2)
    mapping["base"]["scaling"] = {"workers": 2, "cpus_per_worker": 0.9}
    mapping["base"]["cmi"]["agg"] = "mean"
    summary = run_search(load_search(write(tmp_path, mapping)), uri, progress=False)
    states = sorted(r["state"] for r in summary["trials"])
    assert states == ["finished", "stopped"]  # the 2nd trial is worse than the 1st at step 4
    best = summary["best"]
    workers = json.loads((tmp_path / "store" / "trials" / best["trial_id"] / "ray_workers.json").read_text())
    assert sorted(w["rank"] for w in workers) == [0, 1]
    _, children = child_runs(uri, "search-tiny")
    assert sorted(c.info.status for c in children) == ["FINISHED", "KILLED"]
    assert all(c.data.tags.get(TAG_STOPPED) == "true" for c in children if c.info.status == "KILLED")


# -- interrupt and resume through the CLI ----------------------------------------------------------------


def test_interrupt_and_resume(tmp_path, template_db):
    """SIGINT to ``cmidd search`` once 2 trials finished, then ``--resume``: every trial ends exactly once."""
    from cmidd.names import TAG_TRIAL
    from cmidd.tracking import client_for

    uri = store(tmp_path, template_db)
    path = write(tmp_path, space(tmp_path, num_samples=8))
    client = client_for(uri)
    cmd = [CLI, "search", str(path), "--tracking-uri", uri]
    env = {**os.environ, **ENV}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                _, children = child_runs(uri, "search-tiny", client)
                if sum(c.info.status == "FINISHED" for c in children) >= 2:
                    break
                time.sleep(0.5)
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    log_text = (tmp_path / "first.log").read_text()
    assert rc == 130, log_text[-3000:]
    parents, before = child_runs(uri, "search-tiny")
    assert parents[0].info.status == "KILLED"
    assert len(before) < 8

    changed = subprocess.run([*cmd, "--resume", "--set", "search.seed=1"], capture_output=True, text=True, env=env,
                             timeout=120)
    assert changed.returncode == 2 and "--resume: the space or its base job differs" in changed.stderr
    out = subprocess.run([*cmd, "--resume", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])  # --json: one JSON document
    assert doc["summary"]["best"]["trial_id"] and isinstance(doc["summary"]["best"]["metric"], float)
    assert doc["verdict"] and len(doc["summary"]["trials"]) == 8
    # the registered sets' protocol and the gain over the random-real baseline the search logged under it
    answers = "\n".join(doc["answers"])
    assert "under protocol " in answers and "gain over random-real: " in answers and "no random-real draw" not in answers

    parents, after = child_runs(uri, "search-tiny")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags.get("cmidd.search.resumed") == "true"
    trial_ids = [c.data.tags[TAG_TRIAL] for c in after]
    assert len(trial_ids) == len(set(trial_ids)) == 8  # one run per trial, none duplicated
    assert all(c.info.status in ("FINISHED", "KILLED") for c in after)  # none left RUNNING
    finished_before = {c.info.run_id for c in before if c.info.status == "FINISHED"}
    assert finished_before <= {c.info.run_id for c in after if c.info.status == "FINISHED"}
    versions = client_for(uri).search_model_versions("name = 'distilled-digits-ipc2'")
    assert len(versions) == 2 and len({v.run_id for v in versions}) == 2
    assert all(v.tags["gain_over_random"].endswith("pt (n=3)") for v in versions)  # paired with the 3 draws
    # the resumed search wrote its Optuna study to the sqlite file: one Optuna trial per Tune trial
    import optuna

    study = optuna.load_study(study_name=doc["summary"]["optuna_study"]["name"],
                              storage=doc["summary"]["optuna_study"]["storage"])
    assert len(study.trials) >= 8 and sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) >= 2


# -- a two-node cluster ------------------------------------------------------------------------------------


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout} s: {log.read_text()[-3000:]}")


def test_two_node_cluster_with_an_mlflow_server(tmp_path, template_db):
    """``cmidd search --address`` on a 2-node local cluster (1 CPU each), 2 trials at once through a real
    ``mlflow server``: trials run on both nodes, and their artifacts reach the server (registered, verified)."""
    from raycluster import cluster, free_port

    from cmidd.names import TAG_NODE

    shutil.copy(template_db, tmp_path / "server.db")
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT, env={**os.environ, **ENV},
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        path = write(tmp_path, space(tmp_path, num_samples=4, max_concurrent_trials=2, asha=None))
        with cluster(tmp_path, (1, 1)) as address:
            wait_for(f"{uri}/health", server, tmp_path / "server.log")
            out = subprocess.run([CLI, "search", str(path), "--address", address, "--tracking-uri", uri],
                                 capture_output=True, text=True, env={**os.environ, **ENV}, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        parents, children = child_runs(uri, "search-tiny")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
        assert len({c.data.tags[TAG_NODE] for c in children}) == 2  # trials landed on both nodes
        from cmidd.tracking import pull

        pulled = pull("digits", 2, tmp_path / "pulled", uri=uri)  # the champion's files, checksums verified
        assert pulled
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)

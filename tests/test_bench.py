"""`cmidd bench` at toy size: the report's schema, every figure finite and positive, targets judged, plots."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

import cmidd.bench.speed as bs
from cmidd.bench import PLANS, SUITES, finite_or_null, plan_for, report_metrics, run_bench, targets
from cmidd.bench._common import stats
from cmidd.bench.quality import parse_variant, variant_job
from cmidd.bench.speed import Setting, summarize
from cmidd.cli import main
from cmidd.errors import ConfigError

TINY = dataclasses.replace(
    PLANS["quick"], warmup=1, repeats=2, speed_ipcs=(2,), speed_images=("digits8",),
    speed_methods=("dm", "dm+cmi", "gm", "gm+cmi"), quality_ipcs=(1, 2), quality_variants=("dm", "dm+cmi"),
    quality_seeds=2, quality_archs=("ConvNetD1",), quality_iterations=3, eval_epochs=2, full_epochs=1,
    proxy_epochs=1, ensemble_epochs=1,
)


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return out, run_bench(["speed", "quality", "ensemble"], TINY, "cpu", out)


def test_speed_schema_and_figures(report):
    out, r = report
    on_disk = json.loads((out / "bench.json").read_text())  # strict JSON: no NaN
    assert on_disk["speed"] == r["speed"]
    keys = [row["setting"] for row in r["speed"]["settings"]]
    assert keys == ["dm/ipc2/digits8", "dm+cmi/ipc2/digits8", "gm/ipc2/digits8", "gm+cmi/ipc2/digits8"]
    for row in r["speed"]["settings"]:
        t = row["s_per_iter"]
        assert t["n"] == TINY.repeats
        assert all(_positive_finite(t[k]) for k in ("median", "min", "max"))
        assert t["min"] <= t["median"] <= t["max"]
        assert _positive_finite(row["peak_mem_mb"])
        if row["method"] == "dm":
            assert _positive_finite(row["bare_s"]["median"]) and _positive_finite(row["loop_over_bare"])
    assert {"torch", "device", "threads", "cpu", "date"} <= set(r["env"])
    assert r["env"]["device"] == "cpu"


def test_quality_rows_cmi_and_ceiling(report):
    _, r = report
    q = r["quality"]
    sets = {(row["ipc"], row["set"]) for row in q["rows"]}
    assert sets == {(i, s) for i in (1, 2) for s in ("random-real", "dm", "dm+cmi")}
    for row in q["rows"]:
        assert 0 < row["acc_mean"] <= 1
    per_arch = [row for row in q["rows"] if row["arch"] == "ConvNetD1"]
    assert all(row["n"] == 2 for row in per_arch)
    # CMI: zero at IPC 1 (each image is its own centroid), positive at IPC 2
    assert q["cmi"]["dm/ipc1"] == 0
    assert all(_positive_finite(q["cmi"][f"{s}/ipc2"]) for s in ("random-real", "dm", "dm+cmi"))
    assert 0 < q["ceiling"]["acc_mean"] <= 1 and q["ceiling"]["n"] == 2
    assert q["curves"]["dm+cmi/ipc2"]["step"] == [1, 2, 3]


def test_targets_markdown_plots_and_metrics(report):
    out, r = report
    names = [t["target"] for t in r["targets"]]
    assert "dm > random-real at IPC 1 (ConvNetD1)" in names
    assert all(isinstance(t["met"], bool) for t in r["targets"])
    md = (out / "bench.md").read_text()
    assert "## Speed" in md and "## Quality" in md and "dm+cmi/ipc2/digits8" in md
    for png in ("accuracy_vs_ipc.png", "curves.png", "speed.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    m = report_metrics(r)
    assert m and all(math.isfinite(v) for v in m.values())
    assert all("+" not in k for k in m)  # MLflow refuses '+' in metric names


def test_summary_and_target_logic():
    def row(setting, med, bare=None):
        r = {"setting": setting, "s_per_iter": stats([med, med]), "loop_over_bare": bare}
        return r

    s = summarize([row("dm/ipc10/cifar32", 1.0), row("dm+cmi/ipc10/cifar32", 1.5, 1.2),
                   row("dm+cmi(every4)/ipc10/cifar32", 1.1), row("dm+cmi(bf16)/ipc10/cifar32", 1.3)])
    assert s["cmi_overhead_ipc10_32px"] == pytest.approx(0.5)
    assert s["cmi_overhead_every4_ipc10_32px"] == pytest.approx(0.1)
    assert s["cmi_overhead_bf16_ipc10_32px"] == pytest.approx(0.3)
    assert s["loop_over_bare_ipc10_32px"] == 1.2
    t = {x["target"]: x["met"] for x in targets({"speed": s})}
    assert t["CMI overhead on DM, IPC 10, 32x32 (ResNet18 proxy)"] is False
    assert t["loop time / bare forward+backward, DM+CMI IPC 10, 32x32"] is True
    assert finite_or_null({"a": [float("nan"), 1.0]}) == {"a": [None, 1.0]}


def test_gm_loop_and_batched_variants_and_their_ratio():
    """``gm(loop)`` / ``gm(batched)`` pin ``method.gm_impl``; the summary gives loop / batched per setting."""
    plan = plan_for(False, speed={"methods": "gm(batched),gm(loop),gm", "ipcs": "10", "images": "mnist28"})
    keys = [s.key for s in plan.settings()]
    assert keys == ["gm(batched)/ipc10/mnist28", "gm(loop)/ipc10/mnist28", "gm/ipc10/mnist28"]
    jobs = [bs.speed_job(s, 1, "cpu") for s in plan.settings()]
    assert [j["method"]["gm_impl"] for j in jobs] == ["batched", "loop", "auto"]
    assert jobs[0]["method"]["dsa_strategy"] == "color_crop_cutout_scale_rotate"
    rows = [{"setting": k, "s_per_iter": stats([m, m])} for k, m in zip(keys, (2.0, 6.0, 6.0))]
    assert summarize(rows)["gm_loop_over_batched/ipc10/mnist28"] == pytest.approx(3.0)


@pytest.mark.parametrize("speed, message", [
    ({"methods": "gm(fast)"}, "--speed-methods: unknown variant 'gm(fast)'"),
    ({"methods": "dm(loop)"}, "--speed-methods: unknown variant 'dm(loop)'"),
    ({"ipcs": "10,x"}, "--speed-ipcs: must be integers in [1, 1000]"),
    ({"ipcs": "0"}, "--speed-ipcs: must be integers in [1, 1000]"),
    ({"images": "cifar100"}, "--speed-images: must be cifar32, digits8 or mnist28"),
])
def test_speed_subset_bad_input(speed, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_for(False, speed=speed)


def test_plan_settings_and_variants(tmp_path):
    full = PLANS["full"].settings()
    assert Setting("dm", True, 10, "cifar32", 4) in full
    assert not any(s.cmi and s.ipc == 1 for s in full)  # CMI is 0 at IPC 1
    job = variant_job({"method": {"name": "dm"}, "cmi": {"lam": 5.0}}, "gm+cmi(every4)", 10, 7, tmp_path)
    assert job["method"]["outer_loop"] == 10 and job["cmi"] == {"lam": 5.0, "every": 4, "precision": "fp32"}
    assert job["method"]["iterations"] == 7 and job["ipc"] == 10
    assert Setting("dm", True, 10, "cifar32", 1, "bf16") in full
    assert Setting("dm", True, 10, "cifar32", 1, "bf16").key == "dm+cmi(bf16)/ipc10/cifar32"
    assert parse_variant("dm+cmi(every4,bf16)") == ("dm", True, 4, "bf16")
    assert parse_variant("idc") == ("idc", False, 1, "fp32")


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    assert main(["bench", "--suite", "speedy", "--out", str(tmp_path / "b")]) == 2
    assert "unknown bench suite 'speedy'" in capsys.readouterr().err
    assert main(["bench", "--repeats", "0", "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()
    assert {"speed", "quality", "ray", "search", "ensemble"} <= set(SUITES.names())
    assert main(["bench", "--suite", "speed", "--budget", "cpu", "--out", str(tmp_path / "b")]) == 2
    assert "--budget: only the reproduce suite" in capsys.readouterr().err
    assert main(["bench", "--suite", "reproduce", "--budget", "gpu", "--out", str(tmp_path / "b")]) == 2
    assert "--budget: must be one of full, quick, cpu, cpu10 (got 'gpu')" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_report_logs_to_mlflow(report, tmp_path):
    from mlflow import MlflowClient

    from cmidd.tracking import log_report

    out, r = report
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = log_report(uri, "cmidd-bench", "bench-test", r["plan"], report_metrics(r), out,
                        ["bench.json", "bench.md", *r["plots"]])
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["speed/dm_cmi/ipc2/digits8/s_per_iter"] > 0
    assert run.data.params["repeats"] == "2"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"bench.json", "bench.md", "speed.png"}


def test_ray_suite_reports_plain_and_workers(ray_local, tmp_path):
    plan = dataclasses.replace(TINY, repeats=1, warmup=1, ray_iterations=1)
    r = run_bench(["ray"], plan, "cpu", tmp_path)["ray"]
    assert set(r["ratios"]) == {"ray_1w_over_plain", "ray_2w_over_plain"}
    assert all(_positive_finite(v) for v in r["ratios"].values())
    assert _positive_finite(r["plain"]["median_s"]) and _positive_finite(r["ray_2w"]["median_s"])
    (t,) = r["targets"]
    assert t["bound"] == "<= 0.15" and isinstance(t["met"], bool)
    assert "Ray Train, 2 worker(s)" in (tmp_path / "bench.md").read_text()


def test_ensemble_suite_and_quality_ensemble_column(report):
    out, r = report
    e = r["ensemble"]
    assert _positive_finite(e["batched_s"]) and _positive_finite(e["sequential_s"])
    assert e["speedup"] == pytest.approx(e["sequential_s"] / e["batched_s"])
    assert e["max_abs_diff"] < 1e-3  # batched and sequential train the same nets
    assert any(t["bound"] == ">= 2" for t in r["targets"])
    ens = [row for row in r["quality"]["rows"] if row["arch"] == "ensemble"]
    assert ens and all(0 < row["acc_mean"] <= 1 for row in ens)
    cross = {(row["ipc"], row["set"]): row["acc_mean"] for row in r["quality"]["rows"]
             if row["arch"] == "cross_arch_mean"}
    single = {(row["ipc"], row["set"]): row["acc_mean"] for row in r["quality"]["rows"] if row["arch"] == "ConvNetD1"}
    assert cross == single  # one architecture: the ensemble row does not enter the cross-architecture mean
    assert "| ConvNetD1 | ensemble | cross-arch mean |" in (out / "bench.md").read_text()


@pytest.mark.parametrize("name", ["speed", "quality", "ray", "search", "ensemble", "reproduce"])
def test_every_suite_is_a_module_with_suite_and_targets(name):
    """Conformance over the registry: each suite module runs itself (``suite``) and judges its figures."""
    from cmidd.bench import SUITES

    module = SUITES.get(name).load()
    assert module.__name__ == f"cmidd.bench.{name}"
    assert callable(module.suite) and callable(module.targets)
    assert SUITES.get(name).targets({"unavailable": "not installed"}) == []


def test_the_seedbench_harness_names_exist():
    # ../shared/seedbench/harness.py imports these public names; the old shims are gone
    import importlib.util

    import cmidd.bench.speed as bs
    from cmidd.chunks import embed_nograd

    assert all(hasattr(bs, n) for n in ("Setting", "time_loop", "speed_job", "PROXY_32", "speed_data"))
    job = bs.speed_job(bs.Setting("dm", True, 10, "cifar32"), 3, "cpu")
    assert job["method"]["iterations"] == 3 and job["cmi"]["lam"] > 0 and callable(embed_nograd)
    assert importlib.util.find_spec("cmidd.bench_speed") is None

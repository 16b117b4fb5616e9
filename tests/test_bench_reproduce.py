"""The reproduce suite of cmidd bench on a tiny budget: every variant runs and the table has its structure."""

from __future__ import annotations

import dataclasses

import json

import pytest

from cmidd.bench import reproduce as br
from cmidd.bench import PLANS, run_bench
from cmidd.config import parse_job

TINY = br.plan_named(
    "quick", data="digits", ipcs=(1, 2), iterations=tuple((m, 2) for m in br.METHODS), eval_epochs=1, seeds=1,
    proxy_epochs=1, experts=1, expert_epochs=3, idc_loops=(1, 1), curve=1,
)


def test_jobs_follow_the_reference_setting(tmp_path):
    full = br.REPRODUCE_PLANS["full"]
    for v in full.variants:
        job = parse_job(br.variant_job(full, v, 10, tmp_path), v)
        assert job.data.name == "mnist5k" and job.net.name == "ConvNet"
        assert (job.net.depth, job.net.width, job.net.norm) == (3, 128, "instance")
        assert job.eval.dsa_strategy == "color_crop_cutout_scale_rotate" and job.eval.dsa_mode == "single"
        assert (job.eval.lr, job.eval.momentum, job.eval.weight_decay, job.eval.batch) == (0.01, 0.9, 5e-4, 256)
        assert (job.cmi.lam > 0) == v.endswith("+cmi")
    assert parse_job(br.variant_job(full, "dsa", 10, tmp_path), "dsa").method.dsa
    assert not parse_job(br.variant_job(full, "dc", 10, tmp_path), "dc").method.dsa


@pytest.mark.slow  # 21 distillations; ~8 min with the suite's ConvNet-3 w128, so a ConvNet-1 w8 here
@pytest.mark.timeout(900)
def test_tiny_reproduce_suite_table(tmp_path, monkeypatch):
    monkeypatch.setitem(br.REPRODUCE_PLANS, "quick", TINY)
    small = dataclasses.replace(PLANS["quick"], job_overrides=("net.depth=1", "net.width=8"))  # every job's net
    report = run_bench(["reproduce"], small, "cpu", tmp_path)
    r = report["reproduce"]
    assert r["dataset"] == "digits" and r["label"] == "reduced budget"
    got = [(row["ipc"], row["variant"]) for row in r["rows"]]
    assert got == [(ipc, v) for ipc in (1, 2) for v in ("random-real", *TINY.variants)]
    for row in r["rows"]:
        assert row["eval_epochs"] == 1 and row["seeds"] == 1
        if row["ipc"] == 1 and "+cmi" in row["variant"]:  # no run: no accuracy, no iterations, the reason
            assert row["acc"] is None and row["iterations"] == 0 and "CMI is 0" in row["note"]
            continue
        assert row["iterations"] == (0 if row["variant"] == "random-real" else 2)
        assert 0.0 <= row["acc"] <= 100.0, row
        if row["variant"] != "random-real":  # curve=1: one evaluation mid-run, then the final one
            assert [p[0] for p in row["curve"]] == [1, 2]
            assert row["curve"][-1][1:] == [row["acc"], row["std"]]
        assert row["vs_random"] == pytest.approx(row["acc"] - r["rows"][0 if row["ipc"] == 1 else 11]["acc"])
        pub = br.PUBLISHED.get(row["variant"], {}).get(row["ipc"])
        assert row["published"] == pub and (row["gap"] is None) == (pub is None)
        if pub is not None:
            assert row["gap"] == pytest.approx(row["acc"] - pub)
    md = (tmp_path / "bench.md").read_text()
    assert "## reproduce" in md and "reduced budget" in md
    assert "| 1 | dm |" in md and "| 89.7 |" in md  # published DM at IPC 1 beside ours
    assert "Accuracy vs iteration" in md and "| 2 | dm+cmi | 1: " in md
    assert "reproduce_curves.png" in report["plots"] and (tmp_path / "reproduce_curves.png").stat().st_size > 0
    assert json.loads((tmp_path / "bench.json").read_text())["reproduce"]["rows"][0]["variant"] == "random-real"


def test_curve_evaluations_are_evenly_spaced(tmp_path):
    plan = br.plan_named("cpu")
    for v in plan.variants:
        job = parse_job(br.variant_job(plan, v, 1, tmp_path), v)
        every, its = job.eval.every, job.method.iterations
        assert every > 0 and len(range(every, its, every)) == plan.curve, (v, every, its)
    assert parse_job(br.variant_job(br.REPRODUCE_PLANS["full"], "dm", 1, tmp_path), "dm").eval.every == 0


def test_set_overrides_every_job_of_the_suite(tmp_path):
    """``cmidd bench --suite reproduce --set data.name=mnist --set data.root=DIR`` runs the suite unchanged."""
    full = br.REPRODUCE_PLANS["full"]
    jobs = br.variant_jobs(full, tmp_path, "cpu", ("data.name=mnist", f"data.root={tmp_path}"))
    assert len(jobs) == len(full.variants) * len(full.ipcs) - sum("+cmi" in v for v in full.variants)
    assert {(j.data.name, j.data.root) for j in jobs.values()} == {("mnist", tmp_path)}


@pytest.mark.parametrize("args, needle", [
    (["--suite", "reproduce", "--set", "data.nme=mnist"], "data.nme: unknown field"),
    (["--suite", "reproduce", "--set", "data.name=mnist9"], "data.name: unknown dataset 'mnist9'"),
    (["--suite", "speed", "--set", "data.name=mnist"], "--set: only the reproduce suite"),
])
def test_bad_set_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, args, needle):
    from cmidd.cli import main

    out = tmp_path / "bench"
    assert main(["bench", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_plan_lambdas_and_rows_not_run(tmp_path):
    """A method's searched lambda reaches its +CMI job only; ``not_run`` rows get their reason and no job."""
    plan = br.plan_named("full", ipcs=(1, 10), variants=("dc", "dm", "dm+cmi", "mtt+cmi"), lams=(("dm", 123.0),),
                         not_run=((10, "dc", "needs a GPU: 173 s/it here"),))
    jobs = br.variant_jobs(plan, tmp_path)
    assert set(jobs) == {(1, "dc"), (1, "dm"), (10, "dm"), (10, "dm+cmi"), (10, "mtt+cmi")}
    assert jobs[10, "dm+cmi"].cmi.lam == 123.0 and jobs[10, "dm"].cmi.lam == 0.0
    assert jobs[10, "mtt+cmi"].cmi.lam == plan.lam != 123.0
    assert plan.why_not(10, "dc") == "needs a GPU: 173 s/it here" and plan.why_not(1, "dc") is None
    assert "CMI is 0" in plan.why_not(1, "dm+cmi")


@pytest.mark.parametrize("name", list(br.REPRODUCE_PLANS))
def test_every_budget_validates(tmp_path, name):
    """Each ``--budget`` builds valid jobs for every row it runs, and names a reason for every row it does not."""
    plan = br.REPRODUCE_PLANS[name]
    jobs = br.variant_jobs(plan, tmp_path)
    for ipc in plan.ipcs:
        for v in plan.variants:
            assert ((ipc, v) in jobs) != bool(plan.why_not(ipc, v)), (name, ipc, v)
    for (ipc, v), job in jobs.items():
        assert job.ipc == ipc and job.method.iterations == plan.iterations_of(v.partition("+")[0])

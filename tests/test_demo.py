"""The main job end to end at toy size, and its job files kept identical to the code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cmidd.config import JOBS_DIR, load_job, parse_job
from cmidd.demo import ARCHS, demo_jobs

ROOT = Path(__file__).resolve().parents[1]
FILES = {"pretrain": "demo_pretrain_proxies_digits", "dm": "demo_distill_dm_digits_ipc10",
         "dm+cmi": "demo_distill_dmcmi_digits_ipc10"}


@pytest.mark.parametrize("key", list(FILES))
def test_the_demo_runs_its_job_files(key, tmp_path):
    """The demo reads cmidd/jobs/demo_*.yaml (outputs moved under its --out): a change to a file is a change to the
    demo."""
    from_file = load_job(JOBS_DIR / f"{FILES[key]}.yaml")
    demo = parse_job(demo_jobs(Path("runs/demo"))[key])
    assert demo == from_file  # the files' own output folders are runs/demo/...
    edited = tmp_path / "jobs"
    edited.mkdir()
    for name in FILES.values():
        text = (JOBS_DIR / f"{name}.yaml").read_text()
        (edited / f"{name}.yaml").write_text(text.replace("seed: 0", "seed: 7"))
    moved = parse_job(demo_jobs(tmp_path / "out", jobs_dir=edited)[key])
    assert moved.seed == 7 and moved.output.dir == tmp_path / "out" / from_file.output.dir.name


def test_quick_demo_overrides_sizes_only(tmp_path):
    full = {k: parse_job(v) for k, v in demo_jobs(tmp_path).items()}
    quick = {k: parse_job(v) for k, v in demo_jobs(tmp_path, quick=True).items()}
    assert quick["dm"].method.iterations < full["dm"].method.iterations
    assert quick["dm+cmi"].cmi == full["dm+cmi"].cmi and quick["dm"].eval.archs == full["dm"].eval.archs
    assert quick["pretrain"].proxies.set == "convnet-x1" and quick["dm"].proxies == quick["pretrain"].proxies


def test_demo_quick_end_to_end(tmp_path, capsys):
    from cmidd.cli import main

    out = tmp_path / "demo"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["-q", "demo", "--quick", "--out", str(out), "--tracking-uri", uri, "--json"]) == 0
    res = json.loads((out / "results.json").read_text())
    from cmidd.curves import strict

    assert json.loads(capsys.readouterr().out) == strict(res)  # --json: results.json's mapping, one document
    assert res["dataset"] == "digits" and res["ipc"] == 10
    sets = {"random-real", "dm", "dm+cmi"}
    singles = [r for r in res["rows"] if r["arch"] != "ensemble"]
    assert {(r["set"], r["arch"]) for r in singles} == {(s, a) for s in sets for a in ARCHS}
    for r in singles:
        assert 0.0 <= r["acc_mean"] <= 1.0 and r["n"] == 1 and r["acc_std"] >= 0
    # the averaged-softmax ensemble of the 4 single models, next to them in the rows and the printed table
    ens = {r["set"]: r for r in res["rows"] if r["arch"] == "ensemble"}
    assert set(ens) == sets and all(r["n"] == len(ARCHS) and 0 <= r["ece"] <= 1 for r in ens.values())
    header = (out / "results.md").read_text().splitlines()[3]  # after the title, the protocol line, a blank
    assert header.startswith("set ") and "ensemble" in header
    assert set(res["cmi"]) == sets and all(math.isfinite(v) and v >= 0 for v in res["cmi"].values())
    assert set(res["sha256"]) == sets and len(set(res["sha256"].values())) == 3
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    for d in ("dm", "dm-cmi"):
        assert (out / d / "synthetic" / "grid.png").is_file()
        assert (out / d / "curves.png").read_bytes()[:4] == b"\x89PNG"
        manifest = json.loads((out / d / "synthetic" / "manifest.json").read_text())
        assert manifest["content_sha256"] == res["sha256"][d.replace("-", "+")]

    # tracked: both sets registered as versions of distilled-digits-ipc10; best = the higher cross-arch mean
    best = res["best"]
    assert best["name"] == "distilled-digits-ipc10" and best["version"] in ("1", "2", 1, 2)
    by_set = {s: sum(r["acc_mean"] for r in singles if r["set"] == s) / len(ARCHS) for s in ("dm", "dm+cmi")}
    assert best["metrics"]["acc/cross_arch_mean"] == pytest.approx(max(by_set.values()), abs=1e-9)

    # the answer names the demo's protocol and the gain over the random-real draws logged under it, paired: each
    # draw scored with the sets' eval seed; the sets' own init draw (seed 0) is the table's random-real row
    assert best["protocol"] == res["protocol"] and best["baseline"] is not None
    rr = sum(r["acc_mean"] for r in singles if r["set"] == "random-real") / len(ARCHS)
    b = best["baseline"]
    assert b["over"] == "versions" and b["selected_from"] == 2 and b["n"] == 2  # dm and dm+cmi, not the max
    champ = b["champion"]
    assert champ["n"] == 3 and champ["own_draw"] and champ["eval_seed"] == 0
    assert [d["draw"] for d in champ["draws"]] == [0, 1, 2]
    assert champ["draws"][0]["gain"] == pytest.approx(100 * (best["value"] - rr), abs=1e-6)
    assert champ["gain"] == pytest.approx(sum(d["gain"] for d in champ["draws"]) / 3)
    assert b["gain"] == pytest.approx(sum(v["gain"] for v in b["versions"]) / 2)
    assert {v["label"] for v in b["versions"]} == {"dm", "dm+cmi"}
    from cmidd.tracking import client_for

    c = client_for(uri)
    base = c.get_run(champ["draws"][0]["run_id"])
    # DM, DM+CMI and the baseline draws side by side: one experiment
    exp = c.get_experiment_by_name("demo-digits-ipc10")
    runs = c.search_runs([exp.experiment_id])
    kinds = sorted((r.data.tags.get("kind"), r.data.tags.get("method", "-")) for r in runs)
    # the demo, DM, DM+CMI, the random-real baseline job and its three draws
    assert base.info.experiment_id == exp.experiment_id and len(kinds) == 7 and kinds.count(("baseline", "-")) == 4
    # one parent run (kind demo) holds DM, DM+CMI and the baseline job (its three draws nested in it), and the
    # comparison figure
    parent = c.get_run(res["parent_run_id"])
    assert parent.data.tags["kind"] == "demo" and parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags.get("method", r.data.tags["kind"]) for r in children) == ["baseline"] + ["dm"] * 2
    job_run = next(r for r in children if r.data.tags["kind"] == "baseline")
    draws = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == job_run.info.run_id]
    assert sorted(r.data.tags["baseline.draw"] for r in draws) == ["0", "1", "2"]
    assert base.info.run_id in {r.info.run_id for r in draws}
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"comparison.png", "results.md", "results.json"}
    assert parent.data.metrics["_key/cross_arch_acc"] == pytest.approx(best["value"])
    assert parent.data.tags["gain_over_random"].endswith(f"pt (n={b['n']})")
    # every version carries its paired gain over random-real as a tag, and its run as a metric that sorts first
    for g in b["versions"]:
        mv = c.get_model_version("distilled-digits-ipc10", str(g["version"]))
        assert mv.tags["gain_over_random"].startswith(f"{g['gain']:+.1f}")
        assert c.get_run(mv.run_id).data.metrics["_key/gain_over_random_pt"] == pytest.approx(g["gain"])
    assert base.data.tags["kind"] == "baseline" and base.data.tags["protocol.id"] == res["protocol"]["id"]
    assert base.data.tags["baseline.draw"] == "0" == base.data.tags["baseline.eval_seed"]
    md = (out / "results.md").read_text()
    table = md.split("\n\n")[1]
    assert "(1 seed: no std)" in md and "+-" not in table and "gain over random-real: " in md
    assert "is the best of 2: biased upward" in md and "gain over random-real per set" in md
    assert f"is the mean over {', '.join(ARCHS)}" in md
    chance = {r["arch"] for r in singles if r["acc_mean"] < 1.5 / 10}
    assert set(res["at_chance"]) == chance and len(res["warnings"]) == len(chance)
    assert all(f"{a} scored at chance" in md for a in chance)

    # the docs take the demo's figures from its own files (tools/readme_figures.py), never by hand
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    import readme_figures

    doc = tmp_path / "docs" / "demo.md"
    (tmp_path / "docs" / "results").mkdir(parents=True)
    doc.write_text(f"intro\n{readme_figures.START}\nold\n{readme_figures.END}\noutro\n")
    assert readme_figures.main([str(out), "--doc", str(doc), "--time", "1 min"]) == 0
    text = doc.read_text()
    assert "old" not in text and (out / "results.md").read_text().strip() in text and "1 min wall" in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert (tmp_path / "docs" / "results" / "demo-comparison.png").is_file()

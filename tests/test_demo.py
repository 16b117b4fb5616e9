"""The main job end to end at toy size, and its job files kept identical to the code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cmidd.config import load_job, parse_job
from cmidd.demo import ARCHS, demo_jobs

ROOT = Path(__file__).resolve().parents[1]
FILES = {"pretrain": "demo_pretrain_proxies_digits", "dm": "demo_distill_dm_digits_ipc10",
         "dm+cmi": "demo_distill_dmcmi_digits_ipc10"}


@pytest.mark.parametrize("key", list(FILES))
def test_job_files_match_the_demo(key):
    from_file = load_job(ROOT / "jobs" / f"{FILES[key]}.yaml")
    assert from_file == parse_job(demo_jobs(Path("runs/demo"))[key])


def test_demo_quick_end_to_end(tmp_path):
    from cmidd.cli import main

    out = tmp_path / "demo"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["-q", "demo", "--quick", "--out", str(out), "--tracking-uri", uri]) == 0
    res = json.loads((out / "results.json").read_text())
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
    for d in ("dm", "dm-cmi"):
        assert (out / d / "synthetic" / "grid.png").is_file()
        manifest = json.loads((out / d / "synthetic" / "manifest.json").read_text())
        assert manifest["content_sha256"] == res["sha256"][d.replace("-", "+")]

    # tracked: both sets registered as versions of distilled-digits-ipc10; best = the higher cross-arch mean
    best = res["best"]
    assert best["name"] == "distilled-digits-ipc10" and best["version"] in ("1", "2", 1, 2)
    by_set = {s: sum(r["acc_mean"] for r in singles if r["set"] == s) / len(ARCHS) for s in ("dm", "dm+cmi")}
    assert best["metrics"]["acc/cross_arch_mean"] == pytest.approx(max(by_set.values()), abs=1e-9)

    # the answer names the demo's protocol and the gain over the random-real baseline logged under it
    assert best["protocol"] == res["protocol"] and best["baseline"] is not None
    rr = sum(r["acc_mean"] for r in singles if r["set"] == "random-real") / len(ARCHS)
    assert best["baseline"]["gain"] == pytest.approx(100 * (best["value"] - rr), abs=1e-6)
    assert best["baseline"]["k_std"] is None  # 1 seed: no std, so no "k std"
    from cmidd.tracking import client_for

    base = client_for(uri).get_run(best["baseline"]["run_id"])
    assert base.data.tags["kind"] == "baseline" and base.data.tags["protocol.id"] == res["protocol"]["id"]
    md = (out / "results.md").read_text()
    assert "(1 seed: no std)" in md and "+-" not in md and "gain over random-real: " in md
    chance = {r["arch"] for r in singles if r["acc_mean"] < 1.5 / 10}
    assert set(res["at_chance"]) == chance and len(res["warnings"]) == len(chance)
    assert all(f"{a} scored at chance" in md for a in chance)

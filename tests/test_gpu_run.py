"""tools/gpu_run.sh's CPU dry run: the four steps of the GPU window at toy sizes, without ray/mlflow/optuna (as on
the bare GPU machine), so the script cannot rot between GPU sessions (issue 27)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_gpu_ready import ROOT, _env

SEEDBENCH = ROOT.parent / "shared" / "seedbench"


@pytest.mark.slow
def test_gpu_run_dry(tmp_path):
    env = {**_env(tmp_path), "PYTHON": sys.executable}
    out = tmp_path / "out"
    r = subprocess.run([str(ROOT / "tools" / "gpu_run.sh"), "--dry", "--out", str(out), "--work", str(tmp_path / "w")],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.md", "gpu_run.json", "gpu_run.log", "gpu_run.md"]
    report = json.loads((out / "gpu_run.json").read_text())
    assert [(s["step"], s["status"]) for s in report["steps"]] == [
        ("check", "ok"), ("harness", "ok"), ("reproduce", "ok"), ("cmi", "ok")]
    assert report["check"]["report"]["status"] == "ok"
    if (SEEDBENCH / "harness.py").is_file():  # the harness ran: reference and cmidd timed side by side
        # the harness sets CUDA_VISIBLE_DEVICES="" at import (it hid the H200 from its own summary): put back
        assert report["harness"]["cuda_visible_restored"] is True
        rows = report["harness"]["rows"]
        assert rows and all(row["reference"]["s_per_iter"]["median"] > 0 and row["cmidd"]["s_per_iter"]["median"] > 0
                            for row in rows)
        assert {(p["dd_precision"], p["cmi_precision"]) for p in report["harness"]["precision"]} >= {
            ("fp32", "fp32"), ("bf16", "fp32"), ("bf16", "bf16")}
    else:
        assert "not found" in report["harness"]["skipped"]
    rows = {row["variant"]: row for row in report["reproduce"]["rows"]}
    assert list(rows) == ["random-real", "dc", "dsa", "idc", "mtt"]
    for v in ("dc", "dsa", "idc", "mtt"):  # each ran, under its box, and says how far it got
        assert rows[v]["acc"] is not None and 1 <= rows[v]["iterations"] <= rows[v]["published_iterations"], rows[v]
    c = report["cmi"]
    assert c["lam_balance"] == pytest.approx(c["g_dd"] / c["g_cmi"]) and c["g_cmi"] > 0
    assert [a["arm"] for a in c["arms"]] == ["dm", "dm+cmi a=1", "dm (bf16)"]
    assert all(a["iterations"] == c["iterations"] for a in c["arms"])  # every arm the same budget
    md = (out / "gpu_run.md").read_text()
    assert "## 3. Reproduce rows" in md and "## 4. Does CMI help?" in md and "NaN" not in md


def test_render_merges_a_rerun(tmp_path):
    """A rerun replaces a step that failed and is kept beside one that was ok; the summary says which."""
    sys.path.insert(0, str(ROOT / "tools"))
    import gpu_run

    first = {"env": {"date": "d", "device": "cpu", "torch": "t", "python": "p"}, "command": "a", "budget_s": 10,
             "seconds": 9, "steps": [{"step": "check", "status": "ok", "seconds": 1, "box": 5},
                                     {"step": "harness", "status": "failed (exit 1)", "seconds": 1, "box": 5},
                                     {"step": "cmi", "status": "ok", "seconds": 1, "box": 5}],
             "check": {}, "harness": {}, "cmi": {"x": 1}}
    rerun = {**first, "command": "b", "seconds": 4,
             "steps": [{"step": "harness", "status": "ok", "seconds": 2, "box": 5},
                       {"step": "cmi", "status": "ok", "seconds": 2, "box": 5}],
             "harness": {"rows": []}, "cmi": {"x": 2}}
    m = gpu_run.merge([first, rerun])
    assert [s["step"] for s in m["steps"]] == ["check", "harness", "cmi", "cmi_rerun"]
    assert m["harness"] == {"rows": []} and m["cmi"] == {"x": 1} and m["cmi_rerun"] == {"x": 2}
    assert m["rerun_seconds"] == 4 and m["seconds"] == 9 and "rerun: b" in m["command"]
    assert "(rerun)" in gpu_run.markdown(m)

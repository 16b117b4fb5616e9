"""tools/gpu_run.sh's CPU dry run: the six steps of the GPU window at toy sizes, without ray/mlflow/optuna (as on
the bare GPU machine before ray is joined from its parts), so the script cannot rot between GPU sessions (issues 27,
37); tools/ray_parts.py's split and join."""

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
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.md", "gpu_run.json", "gpu_run.log", "gpu_run.md"]
    report = json.loads((out / "gpu_run.json").read_text())
    assert [(s["step"], s["status"]) for s in report["steps"]] == [
        ("check", "ok"), ("harness", "ok"), ("gm", "ok"), ("ray", "ok"), ("reproduce", "ok"), ("cmi", "ok")]
    assert report["check"]["report"]["status"] == "ok"
    if (SEEDBENCH / "harness.py").is_file():  # the harness ran: reference and cmidd timed side by side
        # the harness sets CUDA_VISIBLE_DEVICES="" at import (it hid the H200 from its own summary): put back
        assert report["harness"]["cuda_visible_restored"] is True
        rows = report["harness"]["rows"]
        assert rows and all(row["reference"]["s_per_iter"]["median"] > 0 and row["cmidd"]["s_per_iter"]["median"] > 0
                            for row in rows)
        assert report["harness"]["precision"] == []  # the bf16 variants only with --precision-variants
    else:
        assert "not found" in report["harness"]["skipped"]
    gm = {(r["variant"], r["impl"]): r["s_per_update"]["median"] for r in report["gm"]["rows"]}
    assert set(gm) == {("dc", "loop"), ("dc", "batched"), ("dsa", "loop"), ("dsa", "batched")}
    assert all(v > 0 for v in gm.values()) and "n/a on cpu" in report["gm"]["syncs"]["note"]
    rows = {row["variant"]: row for row in report["reproduce"]["rows"]}
    assert list(rows) == ["random-real", "dc", "dsa"]
    faster = "batched" if gm["dsa", "batched"] <= gm["dsa", "loop"] else "loop"
    assert report["reproduce"]["gm_impl"] == faster  # the rows use what the gm step measured faster
    assert "not installed" in report["ray"]["skipped"]  # blocked here, as on the bare GPU machine without parts
    for v in ("dc", "dsa"):  # each ran, under its box, and says how far it got
        assert rows[v]["acc"] is not None and 1 <= rows[v]["iterations"] <= rows[v]["published_iterations"], rows[v]
    c = report["cmi"]
    assert c["lam_balance"] == pytest.approx(c["g_dd"] / c["g_cmi"]) and c["g_cmi"] > 0
    assert [a["arm"] for a in c["arms"]] == ["dm", "dm+cmi a=1"]
    assert all(a["iterations"] == c["iterations"] for a in c["arms"])  # every arm the same budget
    md = (out / "gpu_run.md").read_text()
    for title in ("## 3. Gradient matching", "## 4. Ray Train: skipped", "## 5. Reproduce rows", "## 6. Does CMI help?"):
        assert title in md
    assert "NaN" not in md


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


def _wheels(folder):
    folder.mkdir()
    rng = __import__("random").Random(0)
    for name, size in (("a-1-py3-none-any.whl", 3000), ("big-2-cp312-none-any.whl", 25_000), ("c-3.whl", 10)):
        (folder / name).write_bytes(bytes(rng.getrandbits(8) for _ in range(size)))
    return folder


def test_ray_parts_round_trip_and_tamper(tmp_path, monkeypatch):
    """The wheels survive split -> join byte for byte (sha256); an altered or missing part stops the join with one
    line naming the part and the set to carry."""
    sys.path.insert(0, str(ROOT / "tools"))
    import ray_parts

    src, out = _wheels(tmp_path / "wheels"), tmp_path / "parts"
    m = ray_parts.split(src, out, max_mib=12_000 / 2**20)  # parts of at most 12 kB
    sets = [p["set"] for p in m["parts"]]  # 28 kB of wheels in a tar of ~40 kB: 4 sets
    assert len(sets) >= 3 and sets == [chr(ord("a") + i) for i in range(len(sets))]
    assert all(p["bytes"] <= 12_000 for p in m["parts"]) and sum(p["bytes"] for p in m["parts"]) == m["tar_bytes"]
    assert ray_parts.tar_bytes(src) == ray_parts.tar_bytes(src)  # deterministic
    got = ray_parts.join([out], tmp_path / "joined")
    for name in got["wheels"]:
        assert (tmp_path / "joined" / name).read_bytes() == (src / name).read_bytes()
    part = out / "b" / "part-01"
    data = bytearray(part.read_bytes())
    data[5] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="part-01 is altered"):
        ray_parts.join([out], tmp_path / "j2")
    part.unlink()
    with pytest.raises(SystemExit, match=r"part-01 \(set b\) is missing: carry .ray-parts/b"):
        ray_parts.join([out], tmp_path / "j3")

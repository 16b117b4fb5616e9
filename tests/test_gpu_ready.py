"""GPU readiness on the CPU: the core path runs without ray/mlflow/optuna, tools/gpu_check.py's dry run passes,
and the loop modules create no constant tensors without a device (issue 13)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BLOCKER = '''import sys


class _NoPlatform:
    """Makes ray, mlflow and optuna unimportable, as on a bare GPU machine."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow", "optuna"):
            raise ImportError(f"{name} is blocked in this test")
        return None


sys.meta_path.insert(0, _NoPlatform())
'''


def _env(tmp_path: Path) -> dict[str, str]:
    block = tmp_path / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(block), str(ROOT / "platform")])
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _py(code_or_args: list[str], env: dict[str, str], cwd: Path, timeout: int = 600):
    return subprocess.run([sys.executable, *code_or_args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_blocker_blocks(tmp_path):
    r = _py(["-c", "import ray"], _env(tmp_path), tmp_path)
    assert r.returncode != 0 and "blocked in this test" in r.stderr


def test_run_no_track_without_platform(tmp_path):
    args = ["run", str(ROOT / "jobs/distill_dm_digits_ipc10.yaml"), "--no-track",
            "--set", "method.iterations=2", "--set", "eval.archs=[ConvNetD1]", "--set", "eval.epochs_by_arch={}",
            "--set", "eval.epochs=1", "--set", "eval.num_eval=1", "--set", "eval.baselines=[]",
            "--set", f"output.dir={tmp_path / 'run'}"]
    code = f"import sys; from cmidd.cli import main; sys.exit(main({args!r}))"
    r = _py(["-c", code], _env(tmp_path), tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "result.json").exists()
    assert "blocked" not in r.stderr


def test_bench_speed_without_platform(tmp_path):
    # the quick plan shrunk to two tiny settings: the code path of `cmidd bench --suite speed`, at toy size
    code = (
        "import sys, dataclasses; from cmidd import bench; from cmidd.cli import main\n"
        "bench.PLANS['quick'] = dataclasses.replace(bench.PLANS['quick'], warmup=0, speed_ipcs=(2,),"
        " speed_methods=('dm', 'dm+cmi'), speed_images=('digits8',))\n"
        f"sys.exit(main(['bench', '--suite', 'speed', '--quick', '--repeats', '1', '--out', {str(tmp_path / 'b')!r}]))"
    )
    r = _py(["-c", code], _env(tmp_path), tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    keys = [row["setting"] for row in report["speed"]["settings"]]
    assert keys == ["dm/ipc2/digits8", "dm+cmi/ipc2/digits8"]


def test_gpu_check_dry_run(tmp_path):
    """`tools/gpu_check.py --device cpu` with no platform packages: every method +- CMI, eval, speed, a report."""
    out = tmp_path / "gc"
    r = _py([str(ROOT / "tools/gpu_check.py"), "--device", "cpu", "--out", str(out)], _env(tmp_path), tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((out / "gpu_check.json").read_text())
    assert rep["status"] == "ok" and rep["device"] == "cpu"
    assert [m["run"] for m in rep["methods"]] == ["dm", "dm+cmi", "gm", "gm+cmi", "idc", "idc+cmi", "mtt",
                                                  "mtt+cmi"]
    for m in rep["methods"]:
        assert set(m["ops_by_device"]) == {"cpu"} and m["dtype"] == "torch.float32"
    assert rep["eval"]["loop_s"] > 0 and rep["eval"]["vmap_s"] > 0 and rep["eval"]["loop_over_vmap"] > 0
    assert {(s["setting"], s["variant"]) for s in rep["speed"]} == {
        (k, v) for k in ("dm/ipc2/digits8", "dm+cmi/ipc2/digits8") for v in ("plain", "bf16-autocast")}
    assert "n/a" in rep["syncs"]["note"]
    md = (out / "gpu_check.md").read_text()
    assert "status **ok**" in md and "loop/vmap" in md


def test_gpu_check_cuda_without_gpu_fails_loudly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = _py([str(ROOT / "tools/gpu_check.py"), "--device", "cuda", "--out", str(tmp_path)], _env(tmp_path),
            tmp_path, timeout=120)
    assert r.returncode == 1 and "no CUDA GPU is available" in r.stderr


def test_device_audit_flags_work_off_the_device():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from gpu_check import DeviceAudit
    finally:
        sys.path.remove(str(ROOT / "tools"))
    audit = DeviceAudit(torch.device("cuda"), limit=100)
    with audit:
        small = torch.ones(10) * 2  # small host tensors (random draws, indices) are allowed
        moved = torch.ones(1000).clone()  # a large host copy is listed, not fatal
        big = torch.ones(1000) + 1  # large host compute is a mismatch
    assert big.sum() == 2000 and small.sum() == 20 and moved.sum() == 1000
    assert len(audit.bad) == 1 and "add" in audit.bad[0] and "(1000,)" in audit.bad[0]
    assert audit.host_moves.get("clone.default") == 1 and audit.by_device["cpu"] >= 6
    ok = DeviceAudit(torch.device("cpu"), limit=100)
    with ok:
        torch.ones(1000) + 1
    assert not ok.bad


# modules of the distillation loop: a constant tensor made there must name its device (else it lands on the CPU
# and a cuda run either fails or copies it every iteration)
LOOP_MODULES = ["distill.py", "cmi.py", "formation.py", "data/pool.py", *[f"methods/{p.name}" for p in
                                                                       (ROOT / "platform/cmidd/methods").glob("*.py")]]
CONSTANT_MAKERS = {"tensor", "zeros", "ones", "full", "empty", "eye", "linspace"}


def constant_tensors_without_device(source: str) -> list[int]:
    """Line numbers of ``torch.<maker>(...)`` calls with no ``device=`` keyword."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CONSTANT_MAKERS
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                and not any(k.arg == "device" for k in node.keywords)):
            bad.append(node.lineno)
    return bad


def test_constant_tensor_check_catches_a_missing_device():
    assert constant_tensors_without_device("import torch\nx = torch.zeros(3)\ny = torch.ones(2, device=d)\n") == [2]


@pytest.mark.parametrize("module", LOOP_MODULES)
def test_loop_modules_give_every_constant_tensor_a_device(module):
    path = ROOT / "platform/cmidd" / module
    assert constant_tensors_without_device(path.read_text()) == [], f"{module}: torch.<maker>(...) needs device="


def evaluations_without_device(source: str) -> list[int]:
    """Line numbers of ``evaluate(...)`` calls that name no device (6th positional argument or ``device=``): such a
    call trains its nets on the CPU even when the job runs on a GPU (found by the first GPU run's review)."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "evaluate"
                and len(node.args) < 6 and not any(k.arg == "device" for k in node.keywords)
                and not any(isinstance(a, ast.Starred) for a in node.args)):
            bad.append(node.lineno)
    return bad


def test_evaluation_check_catches_a_missing_device():
    src = "evaluate(x, y, d, cfg, 0)\nevaluate(x, y, d, cfg, 0, dev)\nevaluate(x, y, d, cfg, 0, device=dev)\n"
    assert evaluations_without_device(src) == [1]


@pytest.mark.parametrize("path", sorted((ROOT / "platform/cmidd").rglob("*.py")), ids=lambda p: p.name)
def test_every_evaluation_names_its_device(path):
    assert evaluations_without_device(path.read_text()) == [], f"{path}: evaluate(...) needs the job's device"

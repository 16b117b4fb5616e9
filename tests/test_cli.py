"""The ``cmidd`` command as a user runs it: exit codes, one-line errors, nothing written on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cmidd.cli import main

from conftest import tiny_distill


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "cmidd.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def write_job(tmp_path, raw, name="job.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"data__name": "imagenet"}, "data.name: unknown dataset 'imagenet'"),
        ({"net__name": "ConvNetX"}, "net.name: unknown net 'ConvNetX'"),
        ({"method__name": "mtt2"}, "method.name: unknown method 'mtt2'"),
        ({"cmi__lam": -1}, "cmi.lam: Input should be greater than or equal to 0 (got -1)"),
        ({"ipc": 500}, "ipc: ipc <= smallest class size must hold, but got ipc=500"),
        ({"data__name": "cifar10", "data__root": "/nonexistent/cifar"}, "data.root:"),
        ({"cmi__lam": 1.0, "proxies__pretrain_if_missing": False}, "proxies.dir: no proxy set at"),
    ],
)
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, capsys, over, needle):
    raw = tiny_distill(tmp_path, **over)
    job = write_job(tmp_path, raw)
    code = main(["run", "--no-track", str(job)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "job").exists() and not (tmp_path / "proxies").exists()


def test_yaml_typo_is_one_line(tmp_path, capsys):
    raw = tiny_distill(tmp_path)
    raw["method"]["iteratons"] = 3
    assert main(["run", "--no-track", str(write_job(tmp_path, raw))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.iteratons: unknown field" in err[0]


def test_set_override_and_run_writes_results(tmp_path, capsys):
    job = write_job(tmp_path, tiny_distill(tmp_path))
    assert main(["-q", "run", "--no-track", str(job), "--set", "ipc=1", "--set", "method.iterations=2"]) == 0
    out = capsys.readouterr().out
    assert "ConvNetD1" in out and "sha256" in out
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    assert result["kind"] == "distill" and 0 <= result["metrics"]["acc/ConvNetD1"] <= 1
    manifest = json.loads((tmp_path / "job" / "synthetic" / "manifest.json").read_text())
    assert manifest["ipc"] == 1 and manifest["shapes"]["images"] == [10, 1, 8, 8]


def test_runtime_failure_exit_1(tmp_path, capsys):
    raw = tiny_distill(tmp_path, method__lr_img=1e6, method__iterations=20, net__norm="none")  # the largest lr_img
    assert main(["-q", "run", "--no-track", str(write_job(tmp_path, raw))]) == 1
    err = capsys.readouterr().err
    assert "loss became" in err


def test_validate_and_ls(tmp_path, capsys):
    good = write_job(tmp_path, tiny_distill(tmp_path), "good.yaml")
    bad = write_job(tmp_path, {"kind": "distill", "ipc": -3}, "bad.yaml")
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 2
    assert "bad.yaml: ipc" in capsys.readouterr().err
    assert main(["ls", "nets", "ConvNetD*"]) == 0
    names = capsys.readouterr().out.split()
    assert names == ["ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4", "ConvNetD5"]


def test_validate_prints_each_error_once(tmp_path, capsys):
    bad = write_job(tmp_path, {"kind": "distill", "ipc": -3}, "bad.yaml")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.yaml: ipc" in err[0]


def test_ls_lists_every_catalog_kind(capsys):
    from cmidd.catalog import KINDS, catalog

    assert tuple(catalog()) == KINDS  # the parser's torch-free choices are the catalog's kinds
    for kind in KINDS:
        assert main(["ls", kind]) == 0
        out = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in out] == catalog()[kind].names()
    assert main(["ls", "proxy-sets", "convnet-x1"]) == 0
    assert capsys.readouterr().out.split()[0] == "convnet-x1"  # a recipe: the name, then what is in it


def test_parser_constants_match_the_library():
    """Names the parser repeats so that ``cmidd --help`` imports neither torch nor mlflow."""
    from cmidd.cli import _args, ensemble
    from cmidd.ensemble import SET_MODES
    from cmidd.tracking import DEFAULT_METRIC

    assert ensemble.MODES == list(SET_MODES)
    assert _args.DEFAULT_METRIC == DEFAULT_METRIC


def test_exit_codes_are_picked_in_one_table():
    from cmidd.cli import exit_code
    from cmidd.errors import CmiddError, ConfigError, DataError, UnknownNameError

    assert [exit_code(e) for e in (ConfigError("x"), UnknownNameError("x"), DataError("x"), CmiddError("x"),
                                   KeyboardInterrupt())] == [2, 2, 2, 1, 130]
    assert exit_code(RuntimeError("x")) is None


def test_help_has_examples():
    r = run_cli("--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "cmidd demo" in r.stdout


def test_evaluate_job_on_saved_set_and_tampered_set(tmp_path, capsys):
    job = write_job(tmp_path, tiny_distill(tmp_path))
    assert main(["-q", "run", "--no-track", str(job)]) == 0
    ev = {"kind": "evaluate", "synset": str(tmp_path / "job" / "synthetic"), "ipc": 2,
          "eval": {"archs": ["ConvNetD1"], "num_eval": 1, "epochs": 2, "baselines": ["random-real"]},
          "output": {"dir": str(tmp_path / "ev")}}
    assert main(["-q", "run", "--no-track", str(write_job(tmp_path, ev, "ev.yaml"))]) == 0
    rows = json.loads((tmp_path / "ev" / "result.json").read_text())["rows"]
    assert {r["set"] for r in rows} == {"dm", "random-real"}
    img = tmp_path / "job" / "synthetic" / "images.pt"
    raw = bytearray(img.read_bytes())
    raw[-64] ^= 1
    img.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["-q", "run", "--no-track", str(write_job(tmp_path, ev, "ev.yaml"))]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err

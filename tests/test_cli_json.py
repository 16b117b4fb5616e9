"""--json on the read commands: one strict JSON document, numbers as numbers, errors as {"error", "field"}."""

from __future__ import annotations

import json

from cmidd.cli import main
from cmidd.cli.runs import typed


def _json(capsys, argv: list[str]) -> tuple[int, object]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_runs_rows_are_typed():
    row = {"run_id": "ab", "ipc": "10", "lambda": "8000.0", "acc": 0.95, "method": "dm", "dataset": "-"}
    assert typed(row) == {"run_id": "ab", "ipc": 10, "lambda": 8000.0, "acc": 0.95, "method": "dm", "dataset": None}
    assert typed({"ipc": "x", "lambda": "-"}) == {"ipc": None, "lambda": None}


def test_runs_json_on_an_empty_store_and_a_bad_uri(capsys, tmp_path):
    code, doc = _json(capsys, ["-q", "runs", "--json", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert code == 0 and doc == {"runs": []}
    code, doc = _json(capsys, ["-q", "runs", "--json", "--tracking-uri", "file:///tmp/x"])
    assert code == 2 and "file store is not supported" in doc["error"] and doc["type"] == "ConfigError"


def test_ls_json(capsys):
    code, doc = _json(capsys, ["ls", "nets", "ConvNet*", "--json"])
    assert code == 0 and doc["kind"] == "nets" and {"name": "ConvNetD2"} in doc["names"]
    code, doc = _json(capsys, ["ls", "proxy-sets", "resnet18-x2", "--json"])
    assert doc["names"] == [{"name": "resnet18-x2", "recipe": doc["names"][0]["recipe"]}]
    assert "ResNet18" in doc["names"][0]["recipe"]


def test_version_and_run_help_name_every_job_kind(capsys):
    from cmidd import __version__
    from cmidd.cli.run import KINDS
    from cmidd.config import JOB_KINDS

    assert KINDS == JOB_KINDS
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"cmidd {__version__}"
    try:
        main(["run", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    assert all(k in out for k in JOB_KINDS)


def test_validate_json(capsys, tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: distill\nipc: true\n")
    code = main(["validate", "--json", str(root / "jobs" / "distill_dm_digits_ipc10.yaml"),
                 str(root / "search_spaces" / "digits_dmcmi.yaml"), str(bad)])
    doc = json.loads(capsys.readouterr().out)
    assert code == 2 and [f["ok"] for f in doc["files"]] == [True, True, False]
    assert doc["files"][0]["kind"] == "distill" and doc["files"][1]["kind"] == "search"
    assert "ipc" in doc["files"][2]["error"]

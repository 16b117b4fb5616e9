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


def _all_actions():
    import argparse

    from cmidd.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub


def test_every_argument_has_help_and_run_search_show_examples():
    import argparse

    missing = [(name, a.option_strings or a.dest) for name, sub in _all_actions() for a in sub._actions
               if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []
    epilogs = {name: sub.epilog or "" for name, sub in _all_actions()}
    assert "examples:" in epilogs["run"] and "cmidd run jobs/" in epilogs["run"]
    assert "examples:" in epilogs["search"] and "cmidd search search_spaces/" in epilogs["search"]
    assert all("--json" in {o for a in sub._actions for o in a.option_strings}
               for name, sub in _all_actions() if name in ("run", "evaluate", "demo"))


def test_run_json_is_one_document_and_errors_are_json(capsys, tmp_path):
    import yaml

    from conftest import tiny_distill

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_distill(tmp_path, method__iterations=2)))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    code, doc = _json(capsys, ["run", str(job), "--json", "--tracking-uri", uri])  # logging on: still one document
    assert code == 0 and len(doc["run_id"]) == 32 and doc["tracking_uri"] == uri
    assert doc["result"]["kind"] == "distill" and 0.0 <= doc["result"]["metrics"]["acc/ConvNetD1"] <= 1.0
    assert [v["name"] for v in doc["versions"]] == ["distilled-digits-ipc2"] and len(doc["result"]["sha256"]) == 64
    code, doc = _json(capsys, ["-q", "run", str(job), "--json", "--set", "ipc=500", "--no-track"])
    assert code == 2 and "ipc" in doc["error"] and doc["type"] == "DataError"


def test_evaluate_and_demo_errors_are_json(capsys, tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    code, doc = _json(capsys, ["-q", "evaluate", "--dataset", "digits", "--ipc", "2", "--protocol", "0",
                               "--tracking-uri", uri, "--json"])
    assert code in (1, 2) and "distilled-digits-ipc2" in doc["error"]
    code, doc = _json(capsys, ["-q", "demo", "--json", "--tracking-uri", "file:///tmp/x", "--out", str(tmp_path)])
    assert code == 2 and "file store is not supported" in doc["error"]

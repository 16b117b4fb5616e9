"""Credentials in a tracking URI are never printed or written (``cmidd.redact``; ``tracking.resolve_uri``).

The end-to-end tests give `cmidd` a real URI with a password (``http://USER:PASSWORD@127.0.0.1:PORT``) for a real
`mlflow server` with MLflow's basic-auth app and check every output path: stdout, the error line, the retry and
outage lines, the printed resume command, ``mlflow_run.json``, the run's params and tags, ``registry.json`` of a
pulled set, and the ``--json`` error object.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cmidd.redact import RedactingFilter, redact, split_credentials
from conftest import tiny_distill


def test_redact_hides_the_userinfo_of_every_uri_in_a_text():
    text = "to http://alice:s3cret@h:5000/api and https://bob@x.org, not runs:/abc/synthetic or a@b.c"
    assert redact(text) == "to http://***@h:5000/api and https://***@x.org, not runs:/abc/synthetic or a@b.c"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert redact("'http://u:p%40ss@h'") == "'http://***@h'"


def test_split_credentials_decodes_them_and_leaves_a_clean_uri():
    assert split_credentials("http://alice:p%40ss@h:5000/x") == ("http://h:5000/x", "alice", "p@ss")
    assert split_credentials("https://tok@h") == ("https://h", "tok", None)
    assert split_credentials("http://h:5000") == ("http://h:5000", None, None)


def test_resolve_uri_moves_the_credentials_into_mlflows_variables(monkeypatch):
    from cmidd.tracking import credentials_env, resolve_uri

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert resolve_uri("http://alice:s3cret@127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert credentials_env() == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s3cret"}
    from cmidd.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        resolve_uri("htp://alice:s3cret@127.0.0.1:5000")
    assert "s3cret" not in str(e.value) and "htp://***@127.0.0.1:5000" in str(e.value)


def test_the_log_filter_redacts_message_and_arguments():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "store %s down", ("http://u:pw@h:1",), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "store http://***@h:1 down"


# ----------------------------------------------------------------------------------------------------
# end to end, against a real basic-auth mlflow server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mlflowserver import auth_server

    with auth_server(tmp_path_factory.mktemp("auth-server")) as s:
        yield s


def _env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(k, None)
    return env


def _job(tmp_path: Path, **over) -> Path:
    job = tiny_distill(tmp_path, **over)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cmidd.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env or _env(), timeout=600)


def _with_password(server, password: str | None = None) -> str:
    return server.url.replace("http://", f"http://{server.user}:{password or server.password}@")


def test_no_output_path_holds_the_password(server, tmp_path):
    """stdout, mlflow_run.json, params, tags, registry.json of `pull`; then the error line (plain and --json)."""
    from mlflow import MlflowClient

    pw, uri = server.password, _with_password(server)
    job = _job(tmp_path)
    run = _cli("run", str(job), "--tracking-uri", uri, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert pw not in run.stdout + run.stderr
    assert f"({server.url})" in run.stdout  # stdout names the server, without credentials
    record = json.loads((tmp_path / "job" / "mlflow_run.json").read_text())
    assert record["uri"] == server.url and pw not in json.dumps(record)

    os.environ.update(server.client_env())
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    logged = client.get_run(record["run_id"]).data
    assert not [k for k, v in {**logged.params, **logged.tags}.items() if pw in v or server.user + ":" in v]

    pulled = _cli("pull", "--dataset", "digits", "--ipc", "2", "--out", str(tmp_path / "pulled"),
                  "--tracking-uri", uri, cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    assert pw not in pulled.stdout + pulled.stderr + (tmp_path / "pulled" / "registry.json").read_text()

    wrong = _with_password(server, "wrong-" + pw[:4])
    for extra in ((), ("--json",)):
        bad = _cli("pull", "--dataset", "digits", "--ipc", "2", "--out", str(tmp_path / "p2"),
                   "--tracking-uri", wrong, *extra, cwd=tmp_path)
        assert bad.returncode == 2 and server.url in bad.stdout + bad.stderr, bad.stderr[-2000:]
        assert "wrong-" not in bad.stdout + bad.stderr
    bad = _cli("run", str(job), "--tracking-uri", uri.replace("http://", "htp://"), cwd=tmp_path)
    assert bad.returncode == 2 and "htp://***@127.0.0.1" in bad.stderr and pw not in bad.stderr + bad.stdout


def test_outage_and_resume_lines_hold_no_password(tmp_path):
    """The store goes down mid-run: the outage warning, MLflow's retries, the error line and the resume command
    it prints name the server as http://***@HOST:PORT."""
    from mlflowserver import auth_server

    with auth_server(tmp_path / "server") as server:
        pw, uri = server.password, _with_password(server)
        job = _job(tmp_path, method__iterations=400, output__checkpoint_every=20, eval__epochs=1)
        env = {**_env(), "CMIDD_OUTAGE_BUDGET_S": "2"}
        proc = subprocess.Popen([sys.executable, "-m", "cmidd.cli", "run", str(job), "--tracking-uri", uri],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
        err = []
        for line in proc.stderr:  # the run exists: take the server down
            err.append(line)
            if "mlflow run " in line:
                break
        server.stop()
        out, rest = proc.communicate(timeout=600)
        err = "".join(err) + rest
    assert proc.returncode == 1, err[-3000:]
    assert pw not in out + err
    outage = [x for x in err.splitlines() if "unreachable" in x]
    assert outage and all(server.url in x for x in outage), err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and "--resume" in last, last
    assert f"--tracking-uri http://***@{server.url.removeprefix('http://')}" in last

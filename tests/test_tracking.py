"""MLflow as the system of record, against real stores: sqlite files in tmp dirs and a real ``mlflow server``.

Creating MLflow's tables in a fresh sqlite file takes ~7 s (alembic), so one template database is made per
module and copied for each store. The server starts at the beginning of the module (it needs ~8 s to boot)
and is waited for only by the test that uses it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytest.importorskip("mlflow")

from cmidd import __version__  # noqa: E402
from cmidd import tracking as T  # noqa: E402
from cmidd.config import parse_job  # noqa: E402
from cmidd.errors import ConfigError, DivergenceError, IntegrityError, UnknownNameError  # noqa: E402
from cmidd.runner import run_job  # noqa: E402
from cmidd.synthetic import SyntheticSet  # noqa: E402

from conftest import tiny_distill  # noqa: E402

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
SET_FILES = {"images.pt", "labels.pt", "manifest.json", "grid.png"}
MODEL = "distilled-digits-ipc2"


# -- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """An empty MLflow sqlite database with its tables, copied by every store of this module."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    T.client_for(f"sqlite:///{path}").search_experiments()
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _server_proc(tmp_path_factory, template_db):
    """A real ``mlflow server`` (proxied artifacts) in its own process group; stopped with the whole group."""
    root = tmp_path_factory.mktemp("server")
    shutil.copy(template_db, root / "server.db")
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    with open(root / "server.log", "wb") as logf:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield SimpleNamespace(proc=proc, url=f"http://127.0.0.1:{port}", artifacts=root / "artifacts",
                              log=root / "server.log")
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group (uvicorn and its workers), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def mlflow_server(_server_proc):
    """The server's URL once ``/health`` answers."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if _server_proc.proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {_server_proc.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(_server_proc.url + "/health", timeout=1) as r:
                if r.status == 200:
                    return _server_proc
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"mlflow server did not answer /health: {_server_proc.log.read_text()[-2000:]}")


@pytest.fixture
def store(tmp_path, monkeypatch, template_db) -> str:
    """A fresh sqlite store as MLflow's default: ``sqlite:///mlflow.db`` in the (temporary) working dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(template_db, tmp_path / "mlflow.db")
    return T.resolve_uri(None)


@pytest.fixture(scope="module")
def logged(tmp_path_factory, template_db, digits):
    """Two tiny distill jobs logged to one default sqlite store (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("logged")
    shutil.copy(template_db, root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        runs = [T.tracked_run(parse_job(tiny_distill(root / f"s{s}", seed=s, name=f"tiny-{s}")), data=digits)
                for s in (0, 1)]
    return SimpleNamespace(uri=f"sqlite:///{root / 'mlflow.db'}", root=root, runs=runs,
                           client=T.client_for(f"sqlite:///{root / 'mlflow.db'}"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cmidd.cli", *args]


def _env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "OMP_NUM_THREADS": "1"}  # two torch processes on 2 cores: no oversubscription
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _write_job(path: Path, mapping: dict) -> Path:
    path.write_text(yaml.safe_dump(mapping))
    return path


# -- URI and import rules -----------------------------------------------------------------------------


def test_resolve_uri_order_and_refusals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert T.resolve_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert T.resolve_uri(None) == f"sqlite:///{tmp_path / 'env.db'}"  # relative -> absolute, for workers
    assert T.resolve_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    for bad in ("file:///tmp/mlruns", "mlruns", "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ConfigError, match="tracking-uri"):
            T.resolve_uri(bad)


def test_import_cmidd_and_its_cli_does_not_import_mlflow():
    code = "import sys, cmidd, cmidd.cli, cmidd.cli.best, cmidd.app\nassert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())


# -- one store, two jobs: params, curves, artifacts, registry, best, pull --------------------------------


def test_run_holds_config_curves_artifacts_and_tags(logged):
    c, t = logged.client, logged.runs[0]
    run = c.get_run(t.run_id)
    assert run.info.status == "FINISHED"
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.name == "tiny-0" and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (inp,) = run.inputs.dataset_inputs  # the data set as the run's input (MLflow's Datasets panel)
    assert inp.dataset.name == "digits" and len(inp.dataset.digest) == 16 and json.loads(inp.dataset.profile)["classes"] == 10
    assert {(t.key, t.value) for t in inp.tags} == {("mlflow.data.context", "train")}
    assert run.data.params["method.iterations"] == "4" and run.data.params["cmi.lam"] == "0.0"
    assert run.data.params["eval.archs"] == '["ConvNetD1"]'
    tags = run.data.tags
    assert tags["dataset"] == "digits" and tags["kind"] == "distill" and tags["ipc"] == "2"
    assert tags["code_version"].startswith(__version__)
    assert [m.step for m in c.get_metric_history(t.run_id, "loss_dd")] == [1, 2, 3, 4]
    for key in ("loss_total", "acc/ConvNetD1", "acc_std/ConvNetD1", "acc/cross_arch_mean", "time/distill_s",
                "time/eval_s"):
        assert key in run.data.metrics, key
    assert {Path(f.path).name for f in c.list_artifacts(t.run_id, "synthetic")} == SET_FILES
    assert {f.path for f in c.list_artifacts(t.run_id)} >= {"synthetic", "checkpoints", "result.json",
                                                            "history.json", "curves.png"}
    slot = tags[T.TAG_SLOT]  # checkpoint_every=2 with 4 iterations: steps 2 and 4, the tag names the last
    assert tags[T.TAG_STEP] == "4" and slot == T.CHECKPOINT_SLOTS[1]
    assert {Path(f.path).name for f in c.list_artifacts(t.run_id, slot)} == {"checkpoint.pt", "synthetic"}


def test_versions_carry_tags_and_champion_is_the_best(logged):
    c = logged.client
    versions = sorted(c.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    assert [v.run_id for v in versions] == [t.run_id for t in logged.runs]
    mv = versions[0]
    assert mv.source == f"runs:/{mv.run_id}/synthetic"
    assert mv.tags["method"] == "dm" and mv.tags["lambda"] == "0" and mv.tags["proxy_set"] == "none"
    assert mv.tags["cmi.lam_effective"] == "0.0" and mv.tags["cmi.alpha"] == "0"
    assert mv.tags["content_sha256"] == logged.runs[0].result.synset.sha256()
    run_tags = c.get_run(mv.run_id).data.tags  # the version carries the protocol of the run that scored it
    assert len(run_tags["protocol.id"]) == 10 and mv.tags["protocol.id"] == run_tags["protocol.id"]
    assert mv.tags["protocol.summary"] == run_tags["protocol.summary"]
    assert float(mv.tags["acc/cross_arch_mean"]) == pytest.approx(
        logged.runs[0].result.metrics[T.DEFAULT_METRIC], rel=1e-5)
    accs = {int(v.version): c.get_run(v.run_id).data.metrics[T.DEFAULT_METRIC] for v in versions}
    champion = int(c.get_registered_model(MODEL).aliases[T.CHAMPION])
    assert accs[champion] == max(accs.values())


def test_best_set_joins_versions_with_runs(logged):
    best = T.best_set("digits", 2, uri=logged.uri)
    assert set(best) >= {"name", "version", "run_id", "alias", "metrics", "params", "source", "protocol", "runner_up",
                         "ties", "baseline"}
    assert best["name"] == MODEL and best["alias"] == T.CHAMPION
    run = logged.client.get_run(best["run_id"])
    assert best["protocol"]["id"] == run.data.tags["protocol.id"] and "ConvNetD1 2ep" in best["protocol"]["summary"]
    assert best["runner_up"]["version"] != best["version"]
    by_arch = T.best_set("digits", 2, metric="acc/ConvNetD1", uri=logged.uri)
    assert by_arch["metrics"]["acc/ConvNetD1"] == max(
        logged.client.get_run(t.run_id).data.metrics["acc/ConvNetD1"] for t in logged.runs)
    with pytest.raises(ConfigError, match="acc/cross_arch_mean"):
        T.best_set("digits", 2, metric="acc/nope", uri=logged.uri)
    with pytest.raises(UnknownNameError, match=MODEL):
        T.best_set("digits", 7, uri=logged.uri)


def test_pull_and_load_set_verify_checksums(logged, tmp_path):
    want = {t.run_id: t.result.synset.sha256() for t in logged.runs}
    best = T.best_set("digits", 2, uri=logged.uri)
    out = T.pull("digits", 2, tmp_path / "champion", uri=logged.uri)
    assert SyntheticSet.load(out).sha256() == want[best["run_id"]]
    assert json.loads((out / "registry.json").read_text())["version"] == best["version"]
    v1 = T.load_set("digits", 2, version=1, uri=logged.uri)
    assert v1.sha256() == want[logged.runs[0].run_id] and v1.meta["dataset"] == "digits"
    assert T.pull("digits", 2, out, version=2, uri=logged.uri) == out  # a pulled set is replaced
    assert SyntheticSet.load(out).sha256() == want[logged.runs[1].run_id]
    with pytest.raises(UnknownNameError, match="alias"):
        T.pull("digits", 2, tmp_path / "x", alias="nope", uri=logged.uri)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--out"):
        T.pull("digits", 2, tmp_path / "busy", uri=logged.uri)


def test_tampered_artifact_is_refused_on_pull(logged, tmp_path, capsys):
    from cmidd.cli import main

    run = logged.client.get_run(logged.runs[0].run_id)
    images = Path(run.info.artifact_uri.removeprefix("file://")) / "synthetic" / "images.pt"
    original = images.read_bytes()
    tampered = bytearray(original)
    tampered[-1] ^= 0x01  # one byte
    images.write_bytes(bytes(tampered))
    try:
        with pytest.raises(IntegrityError, match=r"sha256 mismatch.*refusing"):
            T.pull("digits", 2, tmp_path / "bad", version=1, uri=logged.uri)
        assert not (tmp_path / "bad").exists()
        assert main(["pull", "--dataset", "digits", "--ipc", "2", "--version", "1", "--out",
                     str(tmp_path / "bad"), "--tracking-uri", logged.uri]) == 1
        err = capsys.readouterr().err
        assert "images.pt: sha256 mismatch" in err and f"{MODEL} version 1" in err
    finally:
        images.write_bytes(original)


def test_cli_best_pull_runs(logged, tmp_path, capsys):
    from cmidd.cli import main

    uri = ["--tracking-uri", logged.uri]
    assert main(["best", "--dataset", "digits", "--ipc", "2", "--json", *uri]) == 0
    best = json.loads(capsys.readouterr().out)
    assert set(best) >= {"name", "version", "run_id", "alias", "metrics", "params", "source", "protocol"}
    assert main(["best", "--dataset", "digits", "--ipc", "2", *uri]) == 0
    text = capsys.readouterr().out
    assert f"{MODEL} version {best['version']} [champion, champion-{best['protocol']['id']}]" in text
    assert "method    dm" in text and f"protocol  {best['protocol']['id']} (default)" in text
    m = best["metrics"]  # eval.num_eval 1: no std over one seed
    assert f"acc/cross_arch_mean = {m['acc/cross_arch_mean']:.4f}  (mean over ConvNetD1)\n" in text
    assert "+-" not in text
    assert main(["pull", "--dataset", "digits", "--ipc", "2", "--out", str(tmp_path / "p"), *uri]) == 0
    assert "cmidd.load_set" in capsys.readouterr().out
    assert main(["pull", "--dataset", "digits", "--ipc", "2", "--out", str(tmp_path / "q"), "--json", *uri]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["version"] == int(best["version"]) and got["protocol"]["id"] == best["protocol"]["id"]
    assert isinstance(got["ipc"], int) and got["content_sha256"] == SyntheticSet.load(tmp_path / "q").sha256()
    assert main(["runs", "-n", "5", "--json", *uri]) == 0
    rows = json.loads(capsys.readouterr().out)["runs"]
    assert len(rows) == 2 and all(isinstance(r["ipc"], int) and isinstance(r["acc"], float) for r in rows)
    assert main(["runs", "-n", "5", *uri]) == 0
    table = capsys.readouterr().out
    assert table.count("FINISHED") == 2 and "tiny-0" in table
    assert table.splitlines()[0].split()[-1] == "protocol" and table.count(best["protocol"]["id"]) == 2
    assert main(["best", "--dataset", "digits", "--ipc", "9", *uri]) == 2  # unknown model: bad input
    assert "no registered model 'distilled-digits-ipc9'" in capsys.readouterr().err


# -- failures ------------------------------------------------------------------------------------------


def test_failed_job_ends_failed_with_no_version(store, tmp_path, digits):
    raw = tiny_distill(tmp_path, method__lr_img=1e6, net__norm="none", method__iterations=20,
                       output__checkpoint_every=1)
    with pytest.raises(DivergenceError):
        T.tracked_run(parse_job(raw), data=digits)
    c = T.client_for(store)
    (run,) = c.search_runs([c.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FAILED" and "DivergenceError" in run.data.tags["cmidd.error"]
    assert c.search_model_versions(f"name = '{MODEL}'") == []
    with pytest.raises(ConfigError, match="differs"):
        T.tracked_run(parse_job({**raw, "seed": 5}), resume_run_id=run.info.run_id, data=digits)
    with pytest.raises(ConfigError, match="no run"):
        T.tracked_run(parse_job(raw), resume_run_id="0" * 32, data=digits)


def test_one_lifecycle_fails_a_run_and_deletes_the_versions_it_made(store):
    """``open_run``: a failing body ends the run FAILED (KILLED on Ctrl-C or when asked) with the error tagged,
    and deletes the registry versions the session recorded; a body that returns ends FINISHED."""
    c = T.client_for(store)
    T.ensure_model(c, MODEL, "test", {})
    with pytest.raises(RuntimeError, match="boom"):
        with T.open_run(c, "lifecycle", "fails", tags=T.run_tags("report"), params={"a": "1"}) as run:
            mv = c.create_model_version(MODEL, f"runs:/{run.run_id}/{T.SYNTHETIC}", run_id=run.run_id)
            run.versions.append({"name": MODEL, "version": int(mv.version), "alias": None})
            raise RuntimeError("boom")
    failed = c.get_run(run.run_id)
    assert failed.info.status == "FAILED" and failed.data.tags[T.TAG_ERROR] == "RuntimeError: boom"
    assert failed.data.params == {"a": "1"} and failed.data.tags["kind"] == "report"
    assert c.search_model_versions(f"name = '{MODEL}'") == []  # no version points at a failed run's files
    with pytest.raises(KeyboardInterrupt):
        with T.open_run(c, "lifecycle", "interrupted") as run:
            raise KeyboardInterrupt
    assert c.get_run(run.run_id).info.status == "KILLED"
    with pytest.raises(ConfigError):
        with T.open_run(c, "lifecycle", "resumable") as run:
            run.fail_status = "KILLED"
            raise ConfigError("x")
    assert c.get_run(run.run_id).info.status == "KILLED"
    with T.open_run(c, "lifecycle", "ok") as run:
        pass
    assert c.get_run(run.run_id).info.status == "FINISHED"


def test_report_runs_carry_the_tag_keys_of_job_runs(logged, tmp_path):
    (tmp_path / "r.json").write_text("{}")
    run_id = T.log_report(logged.uri, "cmidd-bench", "bench-test", {"plan": {"repeats": 2}}, {"x": 1.0},
                          tmp_path, ["r.json"])
    report = logged.client.get_run(run_id)
    job = logged.client.get_run(logged.runs[0].run_id)
    assert report.info.status == "FINISHED" and report.data.tags["kind"] == "report"
    assert report.data.params == {"plan.repeats": "2"}
    distill_only = {"ipc", "method", "lambda", "proxy_set", "cmi.alpha", "cmi.lam_effective"}  # protocol.*: scores
    job_keys = {k for k in job.data.tags if not k.startswith(("cmidd.checkpoint.", "protocol."))} - distill_only
    assert set(report.data.tags) == job_keys
    assert "cmidd.kind" not in report.data.tags


def test_publishers_are_a_registry_by_job_kind():
    from cmidd.runner import RUNNERS

    assert set(T.PUBLISHERS) == {"distill", "pretrain-proxies", "experts", "ensemble", "baseline"}
    # every job kind but evaluate publishes a set, proxies, experts or baseline draws
    assert set(RUNNERS) - set(T.PUBLISHERS) == {"evaluate"}


def test_bad_data_input_touches_no_store(tmp_path, monkeypatch, digits):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="ipc"):  # DataError: more images per class than the class has
        T.tracked_run(parse_job(tiny_distill(tmp_path, ipc=10_000)), data=digits)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "job").exists()


def test_inner_hooks_run_and_local_resume_backfills_the_curve(store, tmp_path, digits):
    from cmidd.distill import Hooks

    class StopAt3(Hooks):  # what an ASHA stop or a Tune report looks like to the loop
        def __init__(self):
            self.steps = []

        def on_step(self, step, metrics):
            self.steps.append(step)

        def should_stop(self):
            return self.steps[-1:] == [3]

    job = parse_job(tiny_distill(tmp_path, method__iterations=6, output__checkpoint_every=1))
    inner = StopAt3()
    first = T.tracked_run(job, hooks=inner, data=digits)
    c = T.client_for(store)
    assert inner.steps == [1, 2, 3]
    assert [m.step for m in c.get_metric_history(first.run_id, "loss_dd")] == [1, 2, 3]
    second = T.tracked_run(job, resume=True, data=digits)  # a new run continuing the local checkpoint
    assert second.run_id != first.run_id
    assert sorted(m.step for m in c.get_metric_history(second.run_id, "loss_dd")) == [1, 2, 3, 4, 5, 6]


# -- proxies --------------------------------------------------------------------------------------------


def test_proxies_are_registered_and_loaded_by_name(store, tmp_path, digits):
    proxies = {"set": "convnet-x1", "epochs": 1, "dir": str(tmp_path / "trained")}
    job = parse_job({"kind": "pretrain-proxies", "name": "tiny-proxies", "proxies": proxies,
                     "output": {"dir": str(tmp_path / "pp")}})
    t = T.tracked_run(job, data=digits)
    assert t.versions == [{"name": "proxy-digits-ConvNet", "version": 1, "alias": None}]
    mv = T.client_for(store).get_model_version("proxy-digits-ConvNet", "1")
    assert mv.tags["set"] == "convnet-x1" and mv.tags["im_size"] == "8"
    assert len(T.load_proxies_from_registry("convnet-x1", digits)) == 1
    assert len(T.load_proxies_from_registry("proxy-digits-ConvNet/1,proxy-digits-ConvNet", digits)) == 2
    with pytest.raises(UnknownNameError):
        T.load_proxies_from_registry("convnet-x8", digits)

    raw = tiny_distill(tmp_path, cmi__lam=1.0, proxies__dir=None, proxies__from_registry="convnet-x1")
    with pytest.raises(ConfigError, match="from_registry"):  # the core never reads the registry itself
        run_job(parse_job(raw), data=digits)
    d = T.tracked_run(parse_job(raw), data=digits)
    run = T.client_for(store).get_run(d.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["proxy_set"] == "convnet-x1"
    assert run.data.params["proxies.from_registry"] == "convnet-x1" and "cmi" in run.data.metrics
    assert "registry-" in run.data.tags["proxies.local_dir"]
    with pytest.raises(ConfigError, match="not both"):
        parse_job(tiny_distill(tmp_path, proxies__from_registry="convnet-x1"))


# -- a real server: proxied artifacts -----------------------------------------------------------------------


def test_server_log_register_best_pull_and_refuse_tampering(mlflow_server, tmp_path, digits):
    url = mlflow_server.url
    t = T.tracked_run(parse_job(tiny_distill(tmp_path, name="srv")), uri=url, data=digits)
    c = T.client_for(url)
    run = c.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    best = T.best_set("digits", 2, uri=url)
    assert best["run_id"] == t.run_id and best["alias"] == T.CHAMPION
    out = T.pull("digits", 2, tmp_path / "pulled", uri=url)
    assert SyntheticSet.load(out).sha256() == t.result.synset.sha256()

    (images,) = [p for p in mlflow_server.artifacts.rglob("images.pt")
                 if t.run_id in p.parts and "synthetic" == p.parent.name and "checkpoints" not in p.parts]
    data = bytearray(images.read_bytes())
    data[len(data) // 2] ^= 0xFF
    images.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        T.pull("digits", 2, tmp_path / "tampered", uri=url)
    assert not (tmp_path / "tampered").exists()


# -- processes: concurrency on sqlite, SIGKILL and resume ----------------------------------------------


def test_two_concurrent_jobs_on_one_sqlite_store_both_finish(tmp_path, template_db):
    shutil.copy(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    T.ensure_experiment("tiny", uri)  # the driver creates the experiment before any worker logs
    iters = 20
    files = [_write_job(tmp_path / f"job{s}.yaml", tiny_distill(tmp_path / f"w{s}", seed=s,
                        method__iterations=iters, output__checkpoint_every=5)) for s in (0, 1)]
    procs = [subprocess.Popen(_cli("-q", "run", str(f), "--tracking-uri", uri), cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for f in files]
    outs = [p.communicate(timeout=240)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    c = T.client_for(uri)
    runs = c.search_runs([c.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    for r in runs:
        assert [m.step for m in c.get_metric_history(r.info.run_id, "loss_dd")] == list(range(1, iters + 1))
        assert T.DEFAULT_METRIC in r.data.metrics
    assert len(c.search_model_versions(f"name = '{MODEL}'")) == 2
    assert T.CHAMPION in c.get_registered_model(MODEL).aliases


def test_sigkill_leaves_no_version_and_resume_run_continues_from_mlflow(tmp_path, template_db):
    shutil.copy(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = T.ensure_experiment("tiny", uri)
    iters = 60  # ~40 ms each: the kill lands seconds before the end, the poll reacts within ~0.1 s
    job = _write_job(tmp_path / "job.yaml", tiny_distill(tmp_path, method__iterations=iters,
                                                          output__checkpoint_every=5))
    proc = subprocess.Popen(_cli("-q", "run", str(job), "--tracking-uri", uri), cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    c = T.client_for(uri)
    run_id, step = None, None
    deadline = time.monotonic() + 120
    while step is None and time.monotonic() < deadline and proc.poll() is None:
        runs = c.search_runs([exp_id])
        if runs and T.TAG_STEP in runs[0].data.tags:
            run_id, step = runs[0].info.run_id, int(runs[0].data.tags[T.TAG_STEP])
        else:
            time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert step is not None and step < iters, proc.stderr.read().decode()[-2000:]
    run = c.get_run(run_id)
    assert run.info.status != "FINISHED"
    assert c.search_model_versions(f"name = '{MODEL}'") == []

    shutil.rmtree(tmp_path / "job")  # the checkpoint must come from MLflow
    res = subprocess.run(_cli("-q", "run", str(job), "--tracking-uri", uri, "--resume-run", run_id),
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["cmidd.resumed_from_step"]) >= step > 0
    assert [m.step for m in c.get_metric_history(run_id, "loss_dd")] == list(range(1, iters + 1))
    (mv,) = c.search_model_versions(f"name = '{MODEL}'")
    assert mv.run_id == run_id and mv.tags["content_sha256"]
    history = json.loads((tmp_path / "job" / "history.json").read_text())
    assert history["step"] == list(range(1, iters + 1))

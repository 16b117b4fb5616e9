"""Faults lose nothing: damaged checkpoints are refused before any work, a fresh sqlite store survives concurrent
starts, and a resumed job continues its own MLflow run. Real ``cmidd`` processes on real files and stores."""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_distill

CKPT = "checkpoint.pt"
PLATFORM = Path(__file__).resolve().parents[1] / "platform"  # this checkout's cmidd, whatever the cwd


def cli(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(PLATFORM), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "cmidd.cli", "-q", *args], check=False, capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def write_job(tmp_path: Path, raw: dict, name: str = "job.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def runs_in(db: Path) -> list[tuple[str, str]]:
    """(run_uuid, status) of every run in a sqlite MLflow store, read with sqlite3 itself."""
    with sqlite3.connect(db) as con:
        return sorted(con.execute("select run_uuid, status from runs").fetchall())


def _tensor_offset(path: Path, record: str = "data/0") -> int:
    """The file offset of a tensor's bytes inside a ``torch.save`` zip (the images are record 0)."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(record))
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
    n, m = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + n + m


def _flip(data: bytes, at: int, count: int = 4) -> bytes:
    b = bytearray(data)
    for i in range(at, at + count):
        b[i] ^= 0xFF
    return bytes(b)


def _without_checksum(path: Path) -> bytes:
    import io

    state = torch.load(path, weights_only=True)
    state.pop("sha256")
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_damaged_checkpoint_is_refused_before_any_work(tmp_path):
    """A flipped byte (in the images, in the middle), a truncated file or one without a checksum: ``--resume``
    exits 1 with one line naming the file, the file is left as it was, no proxies are pre-trained and no MLflow
    run is created; the intact file resumes."""
    raw = tiny_distill(tmp_path, cmi__lam=1.0, method__iterations=4)
    job = write_job(tmp_path, raw)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    first = cli("run", str(job), "--tracking-uri", uri, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    ckpt = tmp_path / "job" / CKPT
    good = ckpt.read_bytes()
    assert torch.load(ckpt, weights_only=True)["sha256"]
    runs = runs_in(db)
    assert [s for _, s in runs] == ["FINISHED"]
    off = _tensor_offset(ckpt)
    damages = {
        "flipped-image-bytes": (_flip(good, off + 8), "does not match"),
        "flipped-middle-bytes": (_flip(good, len(good) // 2), "damaged"),
        "truncated": (good[: len(good) * 2 // 3], "cannot be read"),
        "empty": (b"", "cannot be read"),
        "no-checksum": (_without_checksum(ckpt), "carries no checksum"),
    }
    for name, (bad, needle) in damages.items():
        ckpt.write_bytes(bad)
        for proxies in (tmp_path / "proxies",):
            if proxies.exists():
                import shutil
                shutil.rmtree(proxies)
        res = cli("run", str(job), "--tracking-uri", uri, "--resume", cwd=tmp_path)
        err = res.stderr.strip().splitlines()
        assert res.returncode == 1, (name, res.stderr)
        assert len(err) == 1 and str(ckpt) in err[0] and needle in err[0], (name, err)
        assert ckpt.read_bytes() == bad, name  # nothing overwritten
        assert not (tmp_path / "proxies").exists(), name  # refused before the proxies were pre-trained
        assert runs_in(db) == runs, name  # no MLflow run created
    ckpt.write_bytes(good)
    ok = cli("run", str(job), "--no-track", "--resume", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


def test_checkpoint_digest_sees_every_field():
    from cmidd.checkpoint import checkpoint_digest

    state = {"images": torch.zeros(2, 1, 2, 2), "opt": {"state": {0: {"m": torch.ones(3)}}, "param_groups": [
        {"lr": 1.0, "nesterov": False, "foreach": None, "params": [0]}]}, "step": 4,
        "history": {"cmi": [float("nan")]}, "key": {"seed": 0}}
    d = checkpoint_digest(state)
    assert d == checkpoint_digest({**state, "sha256": "x"})  # the checksum field itself is left out
    changed = [
        {**state, "step": 5},
        {**state, "images": state["images"].clone().index_fill_(0, torch.tensor([1]), 1e-30)},
        {**state, "opt": {**state["opt"], "state": {0: {"m": torch.ones(3, dtype=torch.float64)}}}},
        {**state, "history": {"cmi": [0.0]}},
        {**state, "key": {"seed": "0"}},
    ]
    assert all(checkpoint_digest(s) != d for s in changed)


RACE = """
import sys, time
from cmidd.tracking import client_for, ensure_experiment, open_run
start = float(sys.argv[2])
while time.time() < start:  # every process touches the fresh store at the same moment
    time.sleep(0.001)
client = client_for(sys.argv[1])
with open_run(client, "race", sys.argv[3]) as run:
    print(run.run_id)
"""


def test_fresh_sqlite_store_under_concurrent_starts(tmp_path):
    """Three processes create the same not-yet-existing sqlite store at the same instant: one creates the tables
    (under the store's file lock), the others wait and use them; every run is there, FINISHED."""
    import time

    db = tmp_path / "sub" / "mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(PLATFORM)}
    start = time.time() + 10  # after the three interpreters have imported mlflow
    procs = [subprocess.Popen([sys.executable, "-c", RACE, f"sqlite:///{db}", str(start), f"r{i}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-800:] for _, e in outs]
    assert [s for _, s in runs_in(db)] == ["FINISHED"] * 3


@pytest.mark.slow
def test_two_cmidd_runs_on_a_fresh_store(tmp_path):
    """Issue 28's scenario: two ``cmidd run`` started together on a sqlite store that does not exist yet."""
    db = tmp_path / "mlflow.db"
    jobs = []
    for i in range(2):
        raw = tiny_distill(tmp_path, name=f"race{i}", method__iterations=2)
        raw["output"]["dir"] = str(tmp_path / f"job{i}")
        jobs.append(write_job(tmp_path, raw, f"job{i}.yaml"))
    env = {**os.environ, "PYTHONPATH": str(PLATFORM)}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-m", "cmidd.cli", "-q", "run", str(j), "--tracking-uri",
                               f"sqlite:///{db}"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for j in jobs]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-800:] for _, e in outs]
    assert [s for _, s in runs_in(db)] == ["FINISHED", "FINISHED"]


def _versions(db: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(db) as con:
        return sorted(con.execute("select name, version, run_id from model_versions").fetchall())


def _kill_at_checkpoint(cmd: list[str], ckpt: Path, cwd: Path, env: dict) -> None:
    """Start ``cmd`` and SIGKILL it once ``ckpt`` exists (a checkpoint was written mid-run)."""
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the job ended before it was killed: {err[-800:]}"


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_same_run(tmp_path):
    """A tracked job SIGKILLed mid-run leaves its run RUNNING; ``--resume`` continues that run (recorded in the
    output folder), ends it FINISHED and registers once; a second ``--resume`` and ``--resume-run`` of a
    finished job register nothing new. A fresh start over a killed one marks the killed run KILLED."""
    raw = tiny_distill(tmp_path, method__iterations=400)
    raw["output"]["checkpoint_every"] = 100
    job = write_job(tmp_path, raw)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    env = {**os.environ, "PYTHONPATH": str(PLATFORM), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "cmidd.cli", "-q", "run", str(job), "--tracking-uri", uri]
    ckpt = tmp_path / "job" / CKPT
    _kill_at_checkpoint(cmd, ckpt, tmp_path, env)
    (killed, status), = runs_in(db)
    assert status == "RUNNING"
    assert json.loads((tmp_path / "job" / "mlflow_run.json").read_text())["run_id"] == killed

    res = cli("run", str(job), "--tracking-uri", uri, "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert runs_in(db) == [(killed, "FINISHED")]  # the same run, finished: no orphan, no second run
    assert [v[2] for v in _versions(db)] == [killed]
    with sqlite3.connect(db) as con:  # every iteration logged once, 1..400
        steps = [s for (s,) in con.execute("select step from metrics where key='loss_dd' order by step")]
    assert steps == list(range(1, 401))

    again = cli("run", str(job), "--tracking-uri", uri, "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(_versions(db)) == 1  # the same set is not registered twice
    assert "version 1" in again.stdout

    # a fresh start (no --resume) over a killed start: the killed run ends KILLED, not RUNNING forever
    import shutil

    shutil.rmtree(tmp_path / "job")
    _kill_at_checkpoint(cmd, ckpt, tmp_path, env)
    orphan = json.loads((tmp_path / "job" / "mlflow_run.json").read_text())["run_id"]
    fresh = cli("run", str(job), "--tracking-uri", uri, "--set", "method.iterations=400", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    status = dict(runs_in(db))
    assert status[orphan] == "KILLED" and "RUNNING" not in status.values()
    assert len(_versions(db)) == 1  # the fresh start made the same set again: still one version


# -- a tracking outage ------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(root: Path, port: int) -> subprocess.Popen:
    """A real ``mlflow server`` (proxied artifacts) on 127.0.0.1:port in its own process group, once /health answers."""
    import time
    import urllib.request

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination",
           str(root / "artifacts"), "--workers", "1"]
    with open(root / "server.log", "ab") as logf:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.25)
    pytest.fail("mlflow server did not start")


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _run_to_first_checkpoint(tmp_path: Path, root: Path, url: str, iterations: int, budget: float):
    """Start a tracked `cmidd run` against the server at ``url`` (its store ``root/server.db``) with the outage
    budget ``budget`` and return (job file, env, process) once its first checkpoint is uploaded. MLflow's HTTP
    variables are left out of its environment: the job derives them from its own budget."""
    import time

    raw = tiny_distill(tmp_path, method__iterations=iterations)
    raw["output"]["checkpoint_every"] = 50
    job = write_job(tmp_path, raw)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    env.update({"PYTHONPATH": str(PLATFORM), "PYTHONUNBUFFERED": "1", "CMIDD_OUTAGE_BUDGET_S": str(budget)})
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "cmidd.cli", "-q", "run", str(job), "--tracking-uri", url],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # wait for the first uploaded checkpoint
        with sqlite3.connect(root / "server.db") as con:
            if con.execute("select 1 from tags where key='cmidd.checkpoint.step'").fetchall():
                break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    return job, env, proc


@pytest.mark.slow
def test_tracking_outage_is_bounded_then_resumed(tmp_path):
    """The mlflow server dies mid-run: the job keeps distilling, gives up after the outage budget with one line
    naming the server and the resume command (exit 1, minutes sooner than MLflow's own retries), its local
    checkpoint intact; with the server back, that command finishes the same run and registers the set once."""
    import time

    from cmidd.checkpoint import read_checkpoint

    root = tmp_path / "server"
    root.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start_server(root, port)
    try:
        job, env, proc = _run_to_first_checkpoint(tmp_path, root, url, iterations=3000, budget=8)
        _kill_group(server)
        t_kill = time.monotonic()
        _, err = proc.communicate(timeout=300)
        waited = time.monotonic() - t_kill
        assert proc.returncode == 1, err[-2000:]
        assert waited < 90, waited  # the budget (8 s) plus a few bounded calls, not MLflow's minutes of retries
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and url in last and "--resume" in last and "unreachable" in last, err
        assert "Traceback" not in err, err
        assert "Retrying" not in err and sum(x.startswith("error:") for x in err.splitlines()) == 1, err  # issue 33
        ckpt = tmp_path / "job" / CKPT
        assert read_checkpoint(ckpt)["step"] >= 50  # the local output is intact
        run_id = json.loads((tmp_path / "job" / "mlflow_run.json").read_text())["run_id"]

        server = _start_server(root, port)
        hint = last.split("run: ", 1)[1]
        assert hint.startswith("cmidd run ") and hint.endswith(f"--resume --tracking-uri {url}")
        res = cli(*shlex.split(hint)[1:], cwd=tmp_path)  # the printed command, as printed
        assert res.returncode == 0, res.stderr[-2000:]
        with sqlite3.connect(root / "server.db") as con:
            runs = con.execute("select run_uuid, status from runs").fetchall()
            versions = con.execute("select run_id from model_versions").fetchall()
        assert runs == [(run_id, "FINISHED")] and versions == [(run_id,)]
    finally:
        _kill_group(server)


def test_hooks_keep_the_loop_going_through_an_outage_then_give_up_in_budget(tmp_path, monkeypatch):
    """MlflowHooks against a port nobody listens on: steps and checkpoints do not raise while the budget lasts
    (the points stay buffered, the checkpoint pending); ``flush`` gives up with TrackingOutage once it is spent."""
    import time

    from cmidd.errors import TrackingOutage
    from cmidd.synthetic import SyntheticSet
    from mlflow import MlflowClient

    from cmidd.tracking import MlflowHooks
    from cmidd.tracking._bounds import http_defaults

    for name, value in http_defaults(3.0).items():  # cmidd's per-call bounds for this budget, as client_for sets
        monkeypatch.setenv(name, value)  # them (a plain client would retry for minutes); gone after the test
    url = f"http://127.0.0.1:{_free_port()}"  # a plain client: client_for would refuse a server that is down
    hooks = MlflowHooks(MlflowClient(tracking_uri=url), "0" * 32, flush_every=1, budget_s=3.0, retry_seconds=0.5,
                        where=f"MLflow store {url}", resume_hint="cmidd run job.yaml --resume")
    ckpt = tmp_path / CKPT
    ckpt.write_bytes(b"x")
    t0 = time.monotonic()
    for step in range(1, 6):
        hooks.on_step(step, {"loss_dd": 1.0, "loss_total": 1.0})
    hooks.on_checkpoint(5, ckpt, SyntheticSet(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long),
                                              {"ipc": 1, "num_classes": 1}))
    assert hooks.backlog == (10, 5)  # kept, not lost
    with pytest.raises(TrackingOutage, match=r"unreachable for \d+ s .*run: cmidd run job.yaml --resume"):
        hooks.flush()
    assert 3.0 <= time.monotonic() - t0 < 60


@pytest.mark.slow
def test_short_tracking_outage_is_survived(tmp_path):
    """The mlflow server is down for a few seconds mid-run (well within the budget): the job ends 0 in one
    FINISHED run, every iteration's loss logged once, the last checkpoint uploaded, the set registered."""
    import time

    root = tmp_path / "server"
    root.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start_server(root, port)
    try:
        iters = 1500
        raw = tiny_distill(tmp_path, method__iterations=iters)
        raw["output"]["checkpoint_every"] = 50
        job = write_job(tmp_path, raw)
        env = {**os.environ, "PYTHONPATH": str(PLATFORM), "PYTHONUNBUFFERED": "1", "CMIDD_OUTAGE_BUDGET_S": "120"}
        env.pop("MLFLOW_TRACKING_URI", None)
        proc = subprocess.Popen([sys.executable, "-m", "cmidd.cli", "-q", "run", str(job), "--tracking-uri", url],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            with sqlite3.connect(root / "server.db") as con:
                if con.execute("select 1 from tags where key='cmidd.checkpoint.step'").fetchall():
                    break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        _kill_group(server)
        time.sleep(3)
        server = _start_server(root, port)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        # the outage was seen (by MLflow's own bounded retries, or by the hooks' budget) and survived
        assert "Retrying" in err or "unreachable" in err, err[-2000:]
        with sqlite3.connect(root / "server.db") as con:
            (run_id, status), = con.execute("select run_uuid, status from runs").fetchall()
            steps = [s for (s,) in con.execute("select step from metrics where key='loss_dd' order by step")]
            tags = dict(con.execute("select key, value from tags where run_uuid=?", (run_id,)).fetchall())
            versions = con.execute("select run_id from model_versions").fetchall()
        assert status == "FINISHED" and steps == list(range(1, iters + 1))
        assert tags["cmidd.checkpoint.step"] == str(iters) and versions == [(run_id,)]
    finally:
        _kill_group(server)


# -- a search driver killed ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_search_driver_sigkill_then_resume(tmp_path):
    """Issue 28's passing scenario, kept: ``cmidd search`` SIGKILLed (driver, then its whole session: Ray too)
    once a trial finished; ``--resume`` ends every trial exactly once, none left RUNNING, the parent FINISHED."""
    import signal
    import time

    from test_search import ENV, child_runs, space, write

    from cmidd.names import TAG_TRIAL

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write(tmp_path, space(tmp_path, num_samples=4))
    cmd = [sys.executable, "-m", "cmidd.cli", "search", str(path), "--tracking-uri", uri]
    env = {**os.environ, **ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                _, children = child_runs(uri, "search-tiny") if (tmp_path / "mlflow.db").is_file() else (None, [])
                if any(c.info.status == "FINISHED" for c in children):
                    break
                time.sleep(0.5)
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(60)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the local Ray the driver started dies with it
            except ProcessLookupError:
                pass
    assert proc.returncode == -signal.SIGKILL
    time.sleep(2)
    out = subprocess.run([*cmd, "--resume"], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    parents, after = child_runs(uri, "search-tiny")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags[TAG_TRIAL] for c in after]
    assert len(trial_ids) == len(set(trial_ids)) == 4  # one run per trial: none duplicated, none lost
    assert all(c.info.status in ("FINISHED", "KILLED") for c in after)  # none left RUNNING


# -- issue 33: output folders, a hung server ---------------------------------------------------------------------


def _tree_bytes(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.mark.slow
def test_two_jobs_on_one_output_folder(tmp_path):
    """Two ``cmidd run`` with the same ``output.dir``: the second exits 2 at once with one line naming the folder
    and creates no MLflow run; the first finishes, its ``mlflow_run.json`` and run intact."""
    import time

    raw = tiny_distill(tmp_path, method__iterations=2000)
    raw["output"]["checkpoint_every"] = 500
    job = write_job(tmp_path, raw)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    env = {**os.environ, "PYTHONPATH": str(PLATFORM), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    first = subprocess.Popen([sys.executable, "-m", "cmidd.cli", "-q", "run", str(job), "--tracking-uri", uri],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record = tmp_path / "job" / "mlflow_run.json"
    deadline = time.monotonic() + 300
    while not record.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[1][-2000:]
    mine = json.loads(record.read_text())["run_id"]
    second = cli("run", str(job), "--tracking-uri", uri, cwd=tmp_path)
    still_running = first.poll() is None
    err = second.stderr.strip().splitlines()
    assert second.returncode == 2, second.stderr
    assert len(err) == 1 and "output.dir" in err[0] and str(tmp_path / "job") in err[0] and "in use" in err[0], err
    assert still_running  # refused while the first job held the folder, not after it ended
    assert [r for r, _ in runs_in(db)] == [mine]  # the second job created no run
    _, ferr = first.communicate(timeout=600)
    assert first.returncode == 0, ferr[-2000:]
    assert json.loads(record.read_text())["run_id"] == mine and runs_in(db) == [(mine, "FINISHED")]
    again = cli("run", str(job), "--tracking-uri", uri, "--set", "method.iterations=4", cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # released when the first ended: the folder is cmidd's again


@pytest.mark.slow
def test_a_users_folder_is_never_written(tmp_path):
    """``output.dir`` naming a folder of the user's (results of their own, a file under synthetic/): exit 2, one
    line naming the folder, every file byte for byte as it was, no store created. Then ``cmidd pull --out``: into
    a new folder it works and may be repeated (it replaces its own pull), but a folder holding a manifest.json and
    a file of the user's is refused and left as it was."""
    mine = tmp_path / "mine"
    (mine / "synthetic").mkdir(parents=True)
    (mine / "result.json").write_text('{"mine": true}')
    (mine / "history.json").write_text("[1, 2, 3]")
    (mine / "synthetic" / "notes.txt").write_text("my notes\n")
    before = _tree_bytes(mine)
    raw = tiny_distill(tmp_path, method__iterations=2)
    raw["output"]["dir"] = str(mine)
    job = write_job(tmp_path, raw)
    db = tmp_path / "mlflow.db"
    res = cli("run", str(job), "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1, res.stderr
    assert str(mine) in err[0] and "did not write" in err[0] and str(job) in err[0], err
    assert _tree_bytes(mine) == before and not db.exists()

    raw["output"]["dir"] = str(tmp_path / "job")
    write_job(tmp_path, raw)
    assert cli("run", str(job), "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path).returncode == 0
    pull = ["pull", "--dataset", "digits", "--ipc", "2", "--tracking-uri", f"sqlite:///{db}", "--out"]
    for _ in range(2):  # a new folder, then the same folder again (the pull's own files are replaced)
        ok = cli(*pull, str(tmp_path / "pulled"), cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
    (mine / "manifest.json").write_text("{}")
    before = _tree_bytes(mine)
    res = cli(*pull, str(mine), cwd=tmp_path)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and "--out" in err[0] and "did not write" in err[0], res.stderr
    assert _tree_bytes(mine) == before
    (tmp_path / "pulled" / "mine.txt").write_text("added by the user\n")  # a pulled folder the user added to
    before = _tree_bytes(tmp_path / "pulled")
    res = cli(*pull, str(tmp_path / "pulled"), cwd=tmp_path)
    assert res.returncode == 2 and "mine.txt" in res.stderr, res.stderr
    assert _tree_bytes(tmp_path / "pulled") == before


@pytest.mark.slow
def test_tilde_output_dir_is_the_home_folder(tmp_path):
    """``output.dir: ~/runs/job`` writes under $HOME, not into a folder literally named ``~``."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    raw = tiny_distill(tmp_path, method__iterations=2)
    raw["output"]["dir"] = "~/runs/job"
    job = write_job(tmp_path, raw)
    env = {**os.environ, "PYTHONPATH": str(PLATFORM), "HOME": str(home)}
    res = subprocess.run([sys.executable, "-m", "cmidd.cli", "-q", "run", str(job), "--no-track"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (home / "runs" / "job" / "result.json").is_file() and not (work / "~").exists()


def _server_tags(root: Path, run_id: str) -> dict[str, str]:
    with sqlite3.connect(root / "server.db") as con:
        return dict(con.execute("select key, value from tags where run_uuid=?", (run_id,)).fetchall())


@pytest.mark.slow
def test_hung_tracking_server_is_bounded_by_the_budget_then_resumed(tmp_path):
    """The mlflow server is SIGSTOPped mid-run (it hangs: connections are accepted, never answered). The job gives
    up within the budget (10 s) plus the time to its next MLflow call, with one ``error:`` line and no urllib3
    retry chatter; with the server resumed, the printed command finishes the same run, and its
    ``cmidd.resumed_from_step`` tag is the local checkpoint's step (newer than the server's)."""
    import signal
    import time

    from cmidd.checkpoint import read_checkpoint

    root = tmp_path / "server"
    root.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start_server(root, port)
    budget = 10
    try:
        job, env, proc = _run_to_first_checkpoint(tmp_path, root, url, iterations=6000, budget=budget)
        os.killpg(server.pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        _, err = proc.communicate(timeout=300)
        waited = time.monotonic() - t_stop
        run_id = json.loads((tmp_path / "job" / "mlflow_run.json").read_text())["run_id"]
        server_step = int(_server_tags(root, run_id)["cmidd.checkpoint.step"])
        lines = err.strip().splitlines()
        assert proc.returncode == 1, err[-3000:]
        # the next MLflow call comes within flush_seconds (10 s) of the stop; then the budget; then one step
        assert waited < budget + 10 + 10, (waited, err[-3000:])
        assert lines[-1].startswith("error: ") and "unreachable" in lines[-1] and url in lines[-1], err
        assert sum(line.startswith("error:") for line in lines) == 1, err
        assert not any("Retrying" in line or "urllib3" in line or "Traceback" in line for line in lines), err
        local_step = read_checkpoint(tmp_path / "job" / CKPT)["step"]
        assert local_step > server_step, (local_step, server_step)  # checkpoints went on while the server hung

        os.killpg(server.pid, signal.SIGCONT)
        hint = lines[-1].split("run: ", 1)[1]
        res = cli(*shlex.split(hint)[1:], cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        tags = _server_tags(root, run_id)
        assert tags["cmidd.resumed_from_step"] == str(local_step), (tags["cmidd.resumed_from_step"], local_step)
        with sqlite3.connect(root / "server.db") as con:
            runs = con.execute("select run_uuid, status from runs").fetchall()
            versions = con.execute("select run_id from model_versions").fetchall()
        assert runs == [(run_id, "FINISHED")] and versions == [(run_id,)]
    finally:
        try:
            os.killpg(server.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        _kill_group(server)


def test_hooks_bound_a_hung_store_by_the_budget(tmp_path, monkeypatch):
    """A store that accepts connections and never answers (a listening socket nobody reads: a stopped server):
    MLflow calls time out (1 s per request, one retry), the outage counts from the start of the first hung call,
    no call is started that could end past the budget, and ``flush`` gives up within the budget plus one step."""
    import socket
    import time

    from cmidd.errors import CmiddError, TrackingOutage
    from cmidd.tracking import MlflowHooks, client_for
    from cmidd.tracking._bounds import call_bound_s, store_call_bound_s
    from mlflow import MlflowClient

    for name, value in {"MLFLOW_HTTP_REQUEST_TIMEOUT": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}.items():
        monkeypatch.setenv(name, value)
    assert call_bound_s() == 2.0 and store_call_bound_s("http://h:1") == 2.0
    assert store_call_bound_s("sqlite:///m.db") == 0.0  # a local store's failed call is retried within the budget
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # the kernel accepts connections; nobody ever reads or answers
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(CmiddError, match="did not answer"):  # a job that starts against it stops at once,
            client_for(url)  # one line, within one call's bound
        assert time.monotonic() - t0 < call_bound_s() + 2.0
        # a server that hangs once the job runs: the loop's hooks hold a client made while it still answered
        hooks = MlflowHooks(MlflowClient(tracking_uri=url, registry_uri=url), "0" * 32, flush_every=1, budget_s=5.0,
                            retry_seconds=0.5, where=f"MLflow store {url}", resume_hint="cmidd run job.yaml --resume")
        t0 = time.monotonic()
        step = 0
        with pytest.raises(TrackingOutage, match=r"unreachable for [5-7] s \(budget 5 s"):
            while True:  # the loop goes on (each step ~10 ms) until the budget is spent
                step += 1
                hooks.on_step(step, {"loss_dd": 1.0, "loss_total": 1.0})
                time.sleep(0.01)
        took = time.monotonic() - t0
    assert 5.0 <= took < 5.0 + 2.0, took  # the budget, not (retries + 1) x timeouts x tries
    assert step > 50  # the loop kept stepping between tries

"""Issue 33's scenarios, run as a hostile user would: one row per scenario (exit code, time, stderr lines, what was
left), printed for docs/faults.md. Real processes, a real sqlite store and a real ``mlflow server`` on 127.0.0.1.

    PYTHONPATH=platform python tools/fault_scenarios_33.py [WORKDIR]   (default: a fresh temp folder)

Environment: CMIDD_OUTAGE_BUDGET_S for the server scenarios is set here (20 s, as in the issue).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
W = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="cmidd-i33-")).absolute()
W.mkdir(parents=True, exist_ok=True)
ENV = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
       "RAY_USAGE_STATS_ENABLED": "0"}
ENV.pop("MLFLOW_TRACKING_URI", None)
DB = f"sqlite:///{W / 'mlflow.db'}"


def tiny(out: str, iterations: int = 4, **extra) -> dict:
    job = {"kind": "distill", "name": "tiny", "seed": 0, "ipc": 2, "data": {"name": "digits"},
           "net": {"name": "ConvNetD1", "width": 16}, "method": {"name": "dm", "iterations": iterations,
                                                                 "batch_real": 16},
           "cmi": {"lam": 0}, "proxies": {"set": "convnet-x1", "epochs": 1, "dir": str(W / "proxies")},
           "eval": {"archs": ["ConvNetD1"], "num_eval": 1, "epochs": 2},
           "output": {"dir": out, "checkpoint_every": 50}}
    for k, v in extra.items():
        node = job
        *parents, leaf = k.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return job


def write(name: str, content) -> Path:
    p = W / name
    p.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return p


def cmidd(*args, env=None, timeout=900, **kw) -> tuple[int, float, list[str], str]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "cmidd.cli", "-q", *map(str, args)], cwd=W, env=env or ENV,
                       capture_output=True, text=True, timeout=timeout, check=False, **kw)
    return r.returncode, time.monotonic() - t0, r.stderr.strip().splitlines(), r.stdout


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def row(name: str, rc: int, secs: float, err: list[str], left: str) -> None:
    other = [x for x in err if not x.startswith("[cmidd]")]
    last = (other or [""])[-1]
    print(f"| {name} | exit {rc} in {secs:.1f} s | {len(other)} line(s) (+{len(err) - len(other)} [cmidd]) | "
          f"`{last[:260]}` | {left} |", flush=True)


def runs(db: Path = W / "mlflow.db") -> str:
    if not db.exists():
        return "no mlflow.db"
    with sqlite3.connect(db) as con:
        r = dict(con.execute("select status, count(*) from runs group by status").fetchall())
        v = con.execute("select count(*) from model_versions").fetchone()[0]
    return f"runs {r}, versions {v}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int) -> subprocess.Popen:
    root.mkdir(exist_ok=True)
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "art"),
           "--workers", "1"]
    env = {**ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(720):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.25)
    raise RuntimeError("mlflow server did not start")


def wait_checkpoint_tag(root: Path, proc: subprocess.Popen) -> None:
    while proc.poll() is None:
        with sqlite3.connect(root / "server.db") as con:
            if con.execute("select 1 from tags where key='cmidd.checkpoint.step'").fetchall():
                return
        time.sleep(0.2)


def server_scenario(name: str, sig: int, budget: int = 20) -> None:
    """SIGSTOP (hung) or SIGKILL (gone) the server mid-run; then bring it back and run the printed command."""
    root = W / f"server-{name}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(root, port)
    job = write(f"{name}.yaml", tiny(str(W / name), iterations=12000))
    env = {**ENV, "CMIDD_OUTAGE_BUDGET_S": str(budget)}
    proc = subprocess.Popen([sys.executable, "-m", "cmidd.cli", "-q", "run", str(job), "--tracking-uri", url], cwd=W,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_checkpoint_tag(root, proc)
        os.killpg(server.pid, sig)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=900)
        secs = time.monotonic() - t0
        lines = err.strip().splitlines()
        retry = sum("Retrying" in x for x in lines)
        row(f"server {name} (budget {budget} s)", proc.returncode, secs, lines,
            f"{retry} urllib3 Retrying line(s); {sum(x.startswith('error:') for x in lines)} error line(s); "
            f"time from the {signal.Signals(sig).name} to the exit")
        if sig == signal.SIGSTOP:
            os.killpg(server.pid, signal.SIGCONT)
        else:
            server = start_server(root, port)
        run_id = json.loads((W / name / "mlflow_run.json").read_text())["run_id"]
        with sqlite3.connect(root / "server.db") as con:
            server_step = dict(con.execute("select key, value from tags where run_uuid=?", (run_id,)).fetchall())[
                "cmidd.checkpoint.step"]
        import torch

        local_step = torch.load(W / name / "checkpoint.pt", weights_only=True)["step"]
        hint = lines[-1].split("run: ", 1)[1].split()
        rc, s2, err2, _ = cmidd(*hint[1:], env=env)
        with sqlite3.connect(root / "server.db") as con:
            tags = dict(con.execute("select key, value from tags where run_uuid=?", (run_id,)).fetchall())
            status = con.execute("select status from runs where run_uuid=?", (run_id,)).fetchone()[0]
            nruns = con.execute("select count(*) from runs").fetchone()[0]
        row(f"server {name}: the printed resume command", rc, s2, err2,
            f"local checkpoint step {local_step}, server's {server_step}; tag cmidd.resumed_from_step="
            f"{tags.get('cmidd.resumed_from_step')}; run {status}, {nruns} run(s)")
    finally:
        for s in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(server.pid, s)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()


def main() -> None:
    print(f"workdir {W}")
    print("| scenario | result | stderr | last stderr line | what was left |\n|---|---|---|---|---|")
    # -- two jobs on one output folder
    job = write("same.yaml", tiny(str(W / "same"), iterations=3000))
    first = subprocess.Popen([sys.executable, "-m", "cmidd.cli", "-q", "run", str(job), "--tracking-uri", DB],
                             cwd=W, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (W / "same" / "mlflow_run.json").is_file() and first.poll() is None:
        time.sleep(0.05)
    rc, secs, err, _ = cmidd("run", job, "--tracking-uri", DB)
    first_rc = first.wait()
    rec = json.loads((W / "same" / "mlflow_run.json").read_text())["run_id"][:8]
    row("two `cmidd run` on one output.dir (the second, while the first runs)", rc, secs, err,
        f"the first: exit {first_rc}; mlflow_run.json names the first's run {rec}; {runs()}")
    # -- a user's folder as output.dir
    mine = W / "mine"
    (mine / "synthetic").mkdir(parents=True, exist_ok=True)
    (mine / "result.json").write_text('{"mine": 1}')
    (mine / "history.json").write_text("[1]")
    (mine / "synthetic" / "notes.txt").write_text("my notes\n")
    before = digest(mine)
    rc, secs, err, _ = cmidd("run", write("mine.yaml", tiny(str(mine))), "--tracking-uri", DB)
    row("a user's folder (result.json, history.json, synthetic/notes.txt) as output.dir", rc, secs, err,
        f"folder digest {before} -> {digest(mine)}; {runs()}")
    # -- pull --out into a folder holding a manifest.json and a user's file
    (mine / "manifest.json").write_text("{}")
    before = digest(mine)
    rc, secs, err, _ = cmidd("pull", "--dataset", "digits", "--ipc", "2", "--tracking-uri", DB, "--out", mine)
    row("`cmidd pull --out` a folder holding manifest.json and the user's files", rc, secs, err,
        f"folder digest {before} -> {digest(mine)}")
    rc, secs, err, _ = cmidd("pull", "--dataset", "digits", "--ipc", "2", "--tracking-uri", DB, "--out", W / "pulled")
    rc2, secs2, err2, _ = cmidd("pull", "--dataset", "digits", "--ipc", "2", "--tracking-uri", DB, "--out",
                                W / "pulled")
    row("`cmidd pull --out` a new folder, then the same folder again", rc2, secs + secs2, err2,
        f"first exit {rc}; {sorted(p.name for p in (W / 'pulled').iterdir())}")
    # -- paths at validation
    for name, out in (("output.dir: /", "/"), ('output.dir: ""', ""), ("output.dir of 5,000 characters", "d" * 5000)):
        job = write("path.yaml", tiny(out))
        before = sorted(p.name for p in W.iterdir())
        rc, secs, err, _ = cmidd("run", job, "--tracking-uri", DB)
        after = sorted(p.name for p in W.iterdir())
        row(name, rc, secs, err, "nothing written" if after == before else f"WROTE {set(after) - set(before)}")
    home = W / "home"
    home.mkdir(exist_ok=True)
    rc, secs, err, _ = cmidd("run", write("tilde.yaml", tiny("~/x")), "--no-track", env={**ENV, "HOME": str(home)})
    row("output.dir: ~/x (HOME=WORKDIR/home)", rc, secs, err,
        f"HOME/x/result.json {'exists' if (home / 'x' / 'result.json').is_file() else 'MISSING'}; "
        f"a folder named ~ {'EXISTS' if (W / '~').exists() else 'not made'}")
    # -- the loader
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
    base = yaml.safe_dump(tiny(str(W / "loader")), sort_keys=False)
    cases = [("YAML alias bomb (10**9 values)", base + bomb), ("10,000-deep nesting", base + "x: " + "[" * 10000
                                                                                       + "]" * 10000 + "\n"),
             ("net.width: 1000000", yaml.safe_dump(tiny(str(W / "loader"), net__width=10**6))),
             ("seed: 2**70", yaml.safe_dump(tiny(str(W / "loader"), seed=2**70))),
             ("method.lr_img: 1e308", yaml.safe_dump(tiny(str(W / "loader"), method__lr_img=1e308)))]
    for name, text in cases:
        job = write("loader.yaml", text)
        before = sorted(p.name for p in W.iterdir())
        rc, secs, err, _ = cmidd("run", job, "--tracking-uri", DB, timeout=300)
        after = sorted(p.name for p in W.iterdir())
        row(name, rc, secs, err, "nothing written" if after == before else f"WROTE {set(after) - set(before)}")
    job = write("mem.yaml", tiny(str(W / "mem"), net__width=4096))
    before = sorted(p.name for p in W.iterdir())
    rc, secs, err, _ = cmidd("run", job, "--tracking-uri", DB, env={**ENV, "CMIDD_MEMORY_LIMIT_GB": "2"})
    after = sorted(p.name for p in W.iterdir())
    row("net.width: 4096 with CMIDD_MEMORY_LIMIT_GB=2", rc, secs, err,
        "nothing written" if after == before else f"WROTE {set(after) - set(before)}")
    # -- a search asking for a GPU the machine does not have
    space = yaml.safe_load((REPO / "search_spaces" / "digits_dmcmi.yaml").read_text())
    space["storage"] = str(W / "search")
    space["base"]["output"]["dir"] = str(W / "trial")
    space["resources"] = {"gpus": 1.0}
    job = write("gpu.yaml", space)
    before = sorted(p.name for p in W.iterdir())
    rc, secs, err, _ = cmidd("search", job, "--tracking-uri", f"sqlite:///{W / 'search.db'}", timeout=600)
    after = sorted(p.name for p in W.iterdir())
    row("search with resources.gpus: 1 (this machine has no GPU)", rc, secs, err,
        "nothing written" if after == before else f"WROTE {set(after) - set(before)}")
    # -- a tracking server that hangs, one that is killed
    server_scenario("hung", signal.SIGSTOP)
    server_scenario("killed", signal.SIGKILL)


if __name__ == "__main__":
    main()

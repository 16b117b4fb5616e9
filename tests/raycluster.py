"""A throw-away multi-node Ray cluster on 127.0.0.1 for tests: `ray start --block` per node.

Each node runs in its own process group and is stopped by killing that group, so a test never runs
`ray stop` (which would kill every Ray on the machine, other sessions' included). Every port a node opens
is picked free, so two nodes (and two clusters) can share one machine.

A node can be given Ray custom resources (to pin work to it) and can be isolated: started under `unshare -m`
(root only) with an empty tmpfs over each folder of ``hide`` (e.g. /tmp and the checkout's runs/), it cannot read
the driver's files there, like a second machine. ``env`` is what every node and helper process gets on top of
this process's environment (e.g. RAY_AUTH_MODE=token and RAY_AUTH_TOKEN: secrets stay out of argv).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports() -> list[str]:
    return [
        "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
        "--min-worker-port", "0", "--max-worker-port", "0",
    ]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", **(extra or {})}


CHECKOUT = Path(__file__).resolve().parents[1]  # the code and its .venv: every node runs them
STASH = Path("/mnt")  # where the namespace keeps the checkout while a tmpfs covers the folder it lies in


def _isolation(hide: tuple[Path, ...], keep: Path) -> str:
    """Shell steps (run in a fresh mount namespace) that put an empty tmpfs over each folder of ``hide``, in order,
    while ``keep`` (the checkout: the node's code and venv) stays visible even where it lies under one of them (a
    clone under /tmp): it is bound aside first, then bound back into the new tmpfs."""
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    covering = [p for p in hide if keep != p and keep.is_relative_to(p)]
    steps = [f"mount -t tmpfs tmpfs {q(STASH)}", f"mkdir {q(STASH / 'keep')}",
             f"mount --bind {q(keep)} {q(STASH / 'keep')}"] if covering else []
    for p in hide:
        steps += [f"mkdir -p {q(p)}", f"mount -t tmpfs tmpfs {q(p)}"]
        if p in covering:
            steps += [f"mkdir -p {q(keep)}", f"mount --bind {q(STASH / 'keep')} {q(keep)}"]
    return " && ".join(steps)


def _start(args: list[str], log: Path, env: dict[str, str] | None = None,
           hide: tuple[Path, ...] = ()) -> subprocess.Popen:
    cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args, *_ports()]
    if hide:  # its own mount namespace: an empty tmpfs over each hidden folder, then ray start in it
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f"{_isolation(hide, CHECKOUT)} && exec {shlex.join(cmd)}"]
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(env), start_new_session=True)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def alive_nodes(address: str, env: dict[str, str] | None = None) -> list[dict]:
    """The cluster's live nodes: [{"NodeID", "Resources"}] (empty if it does not answer)."""
    code = (
        "import json, ray; ray.init(address=%r, log_to_driver=False); "
        "print(json.dumps([{'NodeID': n['NodeID'], 'Resources': n['Resources']} for n in ray.nodes() "
        "if n['Alive']])); ray.shutdown()" % address
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env(env))
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return []


def _alive_nodes(address: str, env: dict[str, str] | None = None) -> int:
    return len(alive_nodes(address, env))


@contextmanager
def cluster(tmp_path: Path, cpus_per_node: tuple[int, ...] = (1, 1), timeout: float = 90.0,
            env: dict[str, str] | None = None, resources: dict[int, dict[str, float]] | None = None,
            hide: dict[int, tuple[Path, ...]] | None = None):
    """Start ``len(cpus_per_node)`` nodes (the first is the head); yield the address ``127.0.0.1:PORT``.

    Args:
        env: more environment variables for every node (and the liveness probe).
        resources: node index -> its Ray custom resources.
        hide: node index (not 0) -> folders that node sees as an empty tmpfs (``unshare -m``, root only).
    """
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path / "ray-cluster.log"
    resources, hide = resources or {}, hide or {}

    def extra(i: int) -> list[str]:
        return ["--resources", json.dumps(resources[i])] if i in resources else []

    head = ["--head", "--port", str(port), "--include-dashboard", "false",
            "--ray-client-server-port", str(free_port()), "--num-cpus", str(cpus_per_node[0]), *extra(0)]
    procs = [_start(head, log, env)]
    try:
        time.sleep(3)
        for i, cpus in enumerate(cpus_per_node[1:], start=1):
            procs.append(_start(["--address", address, "--num-cpus", str(cpus), *extra(i)], log, env,
                                tuple(hide.get(i, ()))))
        deadline = time.monotonic() + timeout
        while _alive_nodes(address, env) < len(cpus_per_node):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray cluster at {address} did not come up; see {log}:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield address
    finally:
        for p in reversed(procs):
            stop_group(p)

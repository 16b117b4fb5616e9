"""A throw-away multi-node Ray cluster on 127.0.0.1 for tests: `ray start --block` per node.

Each node runs in its own process group and is stopped by killing that group, so a test never runs
`ray stop` (which would kill every Ray on the machine, other sessions' included). Every port a node opens
is picked free, so two nodes (and two clusters) can share one machine.
"""

from __future__ import annotations

import os
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


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args, *_ports()],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )


def _stop(proc: subprocess.Popen) -> None:
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


def _alive_nodes(address: str) -> int:
    code = (
        "import ray; ray.init(address=%r, log_to_driver=False); "
        "print(sum(n['Alive'] for n in ray.nodes())); ray.shutdown()" % address
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


@contextmanager
def cluster(tmp_path: Path, cpus_per_node: tuple[int, ...] = (1, 1), timeout: float = 90.0):
    """Start ``len(cpus_per_node)`` nodes (the first is the head); yield the address ``127.0.0.1:PORT``."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path / "ray-cluster.log"
    head = ["--head", "--port", str(port), "--include-dashboard", "false",
            "--ray-client-server-port", str(free_port()), "--num-cpus", str(cpus_per_node[0])]
    procs = [_start(head, log)]
    try:
        time.sleep(3)
        for cpus in cpus_per_node[1:]:
            procs.append(_start(["--address", address, "--num-cpus", str(cpus)], log))
        deadline = time.monotonic() + timeout
        while _alive_nodes(address) < len(cpus_per_node):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray cluster at {address} did not come up; see {log}:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield address
    finally:
        for p in reversed(procs):
            _stop(p)

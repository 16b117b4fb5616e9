"""A throw-away `mlflow server` on 127.0.0.1 with MLflow's basic-auth app, for tests.

The admin's user name and password reach the server through MLflow's own environment variables
(MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD), never through argv or a file; its auth config
(MLFLOW_AUTH_CONFIG_PATH, mode 0600) only says where the user database lives. Artifacts are proxied through the
server (``--artifacts-destination``): clients never see its disk. The server runs in its own process group and is
stopped by killing that group.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from raycluster import free_port, stop_group

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT, no credentials
    user: str
    password: str
    proc: subprocess.Popen
    root: Path
    log: Path
    argv: list[str]

    def client_env(self, password: str | None = None) -> dict[str, str]:
        """What a client needs: MLflow's client credentials (the right password unless one is given)."""
        return {"MLFLOW_TRACKING_USERNAME": self.user,
                "MLFLOW_TRACKING_PASSWORD": self.password if password is None else password}

    def stop(self) -> None:
        stop_group(self.proc)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"mlflow server did not answer /health: {log.read_text()[-3000:]}")


@contextmanager
def auth_server(root: Path, user: str = "cmidd-admin"):
    """Start the server in ``root`` (store, artifacts, user database, log); yield a ``Server``."""
    root.mkdir(parents=True, exist_ok=True)
    password = "pw-" + secrets.token_urlsafe(18)
    config = root / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    config.chmod(0o600)
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_USERNAME": user,
           "MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(k, None)
    argv = [MLFLOW, "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination",
            str(root / "artifacts"), "--workers", "1"]
    log = root / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", user, password, proc, root, log, argv)
    try:
        wait_healthy(server.url, proc, log)
        yield server
    finally:
        server.stop()

"""The sqlite store's creation lock (``store_lock``, filelock): it excludes another process while held, and a
holder killed by SIGKILL releases it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from cmidd.tracking._client import store_lock

PLATFORM = Path(__file__).resolve().parents[1] / "platform"
HOLD = """
import sys, time
from pathlib import Path
from cmidd.tracking._client import store_lock
with store_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_store_lock_excludes_another_process_and_is_released_when_its_holder_dies(tmp_path):
    db = tmp_path / "mlflow.db"
    lock = tmp_path / "mlflow.db.lock"
    env = {**os.environ, "PYTHONPATH": str(PLATFORM)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Timeout):  # held by the other process: not acquired here
            FileLock(lock, timeout=0.3).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with FileLock(lock, timeout=10):  # SIGKILL released it
        pass
    with store_lock(db):  # and store_lock itself takes it again
        assert lock.is_file()

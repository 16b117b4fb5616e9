"""Loop hooks that log to one MLflow run: per-step metrics in batches, eval metrics, checkpoints as artifacts."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric

from ..distill import CHECKPOINT, Hooks
from ..synthetic import SyntheticSet
from ..files import sha256_file
from ._client import SYNTHETIC, log_metrics, metrics_at, set_tags

CHECKPOINT_SLOTS = ("checkpoints/0", "checkpoints/1")
TAG_SLOT, TAG_STEP, TAG_SHA = "cmidd.checkpoint.slot", "cmidd.checkpoint.step", "cmidd.checkpoint.sha256"


class MlflowHooks(Hooks):
    """Logs the loop's metrics and checkpoints to one MLflow run, then calls ``inner`` (e.g. Tune reports).

    Per-iteration metrics are buffered and sent with one ``log_batch`` every ``flush_every`` steps or
    ``flush_seconds`` (a single ``log_metric`` costs ~20 ms on sqlite, a batch of 300 points ~60 ms), and
    at every eval and checkpoint. Steps ``<= skip_through`` are not logged: a resumed run recomputes them
    exactly, and MLflow already has them.

    Args:
        client: MLflow client of the run's store.
        run_id: the run.
        inner: hooks to call after logging (their ``should_stop`` is the answer).
        flush_every: steps between batches.
        flush_seconds: longest time a point waits in the buffer.
        skip_through: last step MLflow already has.
        slot: the checkpoint slot the run's tag currently names (the next upload goes to the other).
    """

    def __init__(self, client: MlflowClient, run_id: str, inner: Hooks | None = None, flush_every: int = 50,
                 flush_seconds: float = 10.0, skip_through: int = 0, slot: str | None = None):
        self.client, self.run_id, self.inner = client, run_id, inner or Hooks()
        self.flush_every, self.flush_seconds, self.skip_through = flush_every, flush_seconds, skip_through
        self.slot = slot
        self.first_step: int | None = None
        self._buf: list[Metric] = []
        self._since, self._last = 0, time.monotonic()

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.first_step is None:
            self.first_step = step
        if step > self.skip_through:
            self._buf += metrics_at(step, metrics)
            self._since += 1
            if self._since >= self.flush_every or time.monotonic() - self._last > self.flush_seconds:
                self.flush()
        self.inner.on_step(step, metrics)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        if step > self.skip_through:
            self._buf += metrics_at(step, metrics)
        self.flush()
        self.inner.on_eval(step, metrics)

    def on_checkpoint(self, step: int, path: Path, synset: SyntheticSet) -> None:
        self.flush()
        self.slot = upload_checkpoint(self.client, self.run_id, step, Path(path), synset, self.slot)
        self.inner.on_checkpoint(step, path, synset)

    def should_stop(self) -> bool:
        return self.inner.should_stop()

    def flush(self) -> None:
        """Send the buffered points (one ``log_batch`` per 1000)."""
        if self._buf:
            log_metrics(self.client, self.run_id, self._buf)
        self._buf, self._since, self._last = [], 0, time.monotonic()


def upload_checkpoint(client: MlflowClient, run_id: str, step: int, path: Path, synset: SyntheticSet,
                      current_slot: str | None) -> str:
    """Upload checkpoint.pt and the set at ``step`` to the slot the run's tag does not name; move the tag.

    Returns:
        The slot written (``checkpoints/0`` or ``checkpoints/1``).
    """
    slot = CHECKPOINT_SLOTS[1] if current_slot == CHECKPOINT_SLOTS[0] else CHECKPOINT_SLOTS[0]
    with tempfile.TemporaryDirectory(prefix="cmidd-ckpt-") as tmp:
        shutil.copy2(path, Path(tmp) / CHECKPOINT)
        synset.save(Path(tmp) / SYNTHETIC)
        sha = sha256_file(Path(tmp) / CHECKPOINT)
        client.log_artifacts(run_id, tmp, slot)
    set_tags(client, run_id, {TAG_SLOT: slot, TAG_STEP: str(step), TAG_SHA: sha})  # only after the upload
    return slot

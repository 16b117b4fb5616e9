"""Loop hooks that log to one MLflow run: per-step metrics in batches, eval metrics, checkpoints as artifacts.

A tracking outage is bounded: a failed MLflow call from the loop does not stop the distillation. The points stay
buffered and the last checkpoint stays local (marked pending); both are retried every ``retry_seconds`` and
before the job publishes. When the store stays unreachable longer than the budget (``CMIDD_OUTAGE_BUDGET_S``,
default 60 s) the job ends with ``TrackingOutage``: one line naming the store and the command that resumes it.

The budget is wall-clock, a hung server included: the outage counts from the start of the first call that failed
(a call to a stopped server waits out its timeouts first), and no call is started that could end past the budget
(``call_bound_s``: MLflow's per-request timeout and retries, which ``_bounds`` derives from the budget).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from ..distill import CHECKPOINT, Hooks
from ..errors import TrackingOutage
from ..files import sha256_file
from ..synthetic import SyntheticSet
from ._bounds import OUTAGE_ENV, call_bound_s, outage_budget
from ._client import SYNTHETIC, log_metrics, metrics_at, set_tags

log = logging.getLogger(__name__)

CHECKPOINT_SLOTS = ("checkpoints/0", "checkpoints/1")
# errors the store answers with: retrying them is pointless (anything else, e.g. INTERNAL_ERROR from a refused
# connection or TEMPORARILY_UNAVAILABLE, counts as an outage)
_NOT_AN_OUTAGE = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST",
                  "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_ALREADY_EXISTS"}


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
        call_bound: the longest one MLflow call can take (``_bounds.store_call_bound_s``; None: the HTTP
            variables' bound); no call is started during an outage with less of the budget left.
    """

    def __init__(self, client: MlflowClient, run_id: str, inner: Hooks | None = None, flush_every: int = 50,
                 flush_seconds: float = 10.0, skip_through: int = 0, slot: str | None = None,
                 budget_s: float | None = None, retry_seconds: float = 5.0, where: str = "the MLflow store",
                 resume_hint: str = "cmidd run JOB --resume", call_bound: float | None = None):
        self.client, self.run_id, self.inner = client, run_id, inner or Hooks()
        self.flush_every, self.flush_seconds, self.skip_through = flush_every, flush_seconds, skip_through
        self.slot = slot
        self.first_step: int | None = None
        self._buf: list[Metric] = []
        self._since, self._last = 0, time.monotonic()
        self.budget_s = outage_budget() if budget_s is None else budget_s
        self.retry_seconds, self.where, self.resume_hint = retry_seconds, where, resume_hint
        self._pending: tuple[int, Path, SyntheticSet] | None = None  # a checkpoint not uploaded yet
        self._down_since: float | None = None  # when the current outage began (None: the store answers)
        self._next_try = 0.0
        self._last_error: Exception | None = None
        self.call_bound = call_bound_s() if call_bound is None else call_bound  # the longest one call can take

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.first_step is None:
            self.first_step = step
        if step > self.skip_through:
            self._buf += metrics_at(step, metrics)
            self._since += 1
            if self._since >= self.flush_every or time.monotonic() - self._last > self.flush_seconds:
                self.sync()
        self.inner.on_step(step, metrics)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        if step > self.skip_through:
            self._buf += metrics_at(step, metrics)
        self.sync()
        self.inner.on_eval(step, metrics)

    def on_checkpoint(self, step: int, path: Path, synset: SyntheticSet) -> None:
        self._pending = (step, Path(path), synset)  # the newest local checkpoint replaces an older pending one
        self.sync()
        self.inner.on_checkpoint(step, path, synset)

    def should_stop(self) -> bool:
        return self.inner.should_stop()

    @property
    def backlog(self) -> tuple[int, int | None]:
        """(metric points not sent yet, the step of a checkpoint not uploaded yet or None)."""
        return len(self._buf), self._pending[0] if self._pending is not None else None

    def flush(self) -> None:
        """Send the buffered points and upload a pending checkpoint now, waiting out an outage within the budget.

        Raises:
            TrackingOutage: the store stayed unreachable past the budget.
        """
        while not self.sync(force=True):
            time.sleep(min(self.retry_seconds, max(0.1, self._budget_left())))

    def sync(self, force: bool = False) -> bool:
        """Try to send what is buffered and pending (during an outage: at most every ``retry_seconds`` unless
        ``force``); True when nothing is left.

        Raises:
            TrackingOutage: the store has been unreachable for longer than the budget.
        """
        if self._down_since is not None:
            self._give_up_if_spent(None)
            if (not force and time.monotonic() < self._next_try) or self._budget_left() < self.call_bound:
                return False  # not yet; or a call now could end past the budget: wait for it to run out
        started = time.monotonic()
        try:
            if self._buf:
                log_metrics(self.client, self.run_id, self._buf)
                self._buf, self._since, self._last = [], 0, time.monotonic()
            if self._pending is not None:
                step, path, synset = self._pending
                self.slot = upload_checkpoint(self.client, self.run_id, step, path, synset, self.slot)
                self._pending = None
        except MlflowException as e:
            if e.error_code in _NOT_AN_OUTAGE:  # the store answered: a real error, not worth waiting for
                raise
            self._outage(e, started)
            return False
        except (OSError, ConnectionError) as e:  # a refused connection, a timeout, a full disk
            self._outage(e, started)
            return False
        if self._down_since is not None:
            log.warning("%s answers again after %.0f s; the buffered metrics and checkpoint are sent", self.where,
                        time.monotonic() - self._down_since)
            self._down_since = None
        return True

    def _budget_left(self) -> float:
        return self.budget_s - (time.monotonic() - self._down_since) if self._down_since is not None else 0.0

    def _outage(self, error: Exception, started: float) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = started  # the time a hung call spent waiting counts
            log.warning("%s is unreachable (%s); distillation goes on, checkpoints stay local; retrying for up to "
                        "%.0f s (%s)", self.where, _first_line(error), self.budget_s, OUTAGE_ENV)
        self._last_error = error
        self._next_try = now + self.retry_seconds
        self._give_up_if_spent(error)

    def _give_up_if_spent(self, error: Exception | None) -> None:
        if self._down_since is None:
            return
        down = time.monotonic() - self._down_since
        if down >= self.budget_s:
            raise TrackingOutage(
                f"{self.where} unreachable for {down:.0f} s (budget {self.budget_s:.0f} s, "
                f"{OUTAGE_ENV}): {_first_line(error or self._last_error)}; the local output is intact; once the store "
                f"is back, run: {self.resume_hint}") from None


def _first_line(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text[:200]}"


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

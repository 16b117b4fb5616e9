"""The driver's side of a Ray Train job: the event sink actor, and the calling thread that turns rank 0's
events into the caller's ``Hooks`` while ``TorchTrainer.fit()`` runs on a thread of its own.

Rank 0 puts ``("step" | "eval" | "checkpoint" | "worker" | "done" | "error", payload)`` events in the sink;
``drive`` drains it every 50 ms and hands each event to a ``Driver``, which calls the hooks once per step (a
restarted worker group repeats steps since its checkpoint), keeps the last checkpoint in the workdir and sends
``should_stop`` back through the sink. Used by ``cmidd.ray.train.distill_distributed`` only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from .. import errors
from ..distill import CHECKPOINT, History, Hooks
from ..hooks import StepClock
from ..errors import CmiddError
from ..synthetic import SyntheticSet
from ..files import atomic_write

log = logging.getLogger(__name__)

WORKERS_FILE = "ray_workers.json"  # one record per worker start: rank, pid, node, step it resumed from
# After rank 0's result, how long to wait for TorchTrainer.fit() to return. The worker group is shut down
# within a few health checks, but Ray 2.60's controller then waits ~12 s for its PlacementGroupCleaner to
# stop (ray-project/ray#65443); that wait holds no resources, so it runs out in the background.
FINISH_GRACE_S = 1.0


def _sink_class():
    import ray

    @ray.remote(num_cpus=0)
    class _Sink:
        """Events from rank 0 (and worker starts) for the driver, and the driver's stop request."""

        def __init__(self) -> None:
            self.events: list[tuple[str, Any]] = []
            self.stop = False

        def put(self, kind: str, payload: Any) -> bool:
            self.events.append((kind, payload))
            return self.stop

        def take(self) -> list[tuple[str, Any]]:
            out, self.events = self.events, []
            return out

        def request_stop(self) -> None:
            self.stop = True

    return _Sink


def start_sink():
    """A new sink actor, placed on this (the driver's) node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return _sink_class().options(scheduling_strategy=strategy).remote()


class Driver:
    """Turns the sink's events into calls of the caller's hooks (on the caller's thread), once per step."""

    def __init__(self, hooks: Hooks, workdir: Path, sink) -> None:
        self.hooks, self.workdir, self.sink = hooks, workdir, sink
        self.last = {"step": 0, "eval": 0, "checkpoint": 0}
        self.workers: list[dict] = []
        self.done: tuple | None = None
        self.error: BaseException | None = None
        self.stop_sent = False

    def handle(self, kind: str, payload: Any) -> None:
        if kind == "worker":
            self.workers.append(payload)
            if payload["ray_checkpoint"] and payload["rank"] == 0:
                log.info("Ray Train restarted the workers from the checkpoint at step %d", payload["resumed_from"])
            (self.workdir / WORKERS_FILE).write_text(json.dumps(self.workers, indent=1))
        elif kind == "done":
            self.done = payload
        elif kind == "error":
            name, msg = payload
            cls = getattr(errors, name, CmiddError)
            self.error = cls(msg) if isinstance(cls, type) and issubclass(cls, CmiddError) else CmiddError(msg)
        elif self.error is None:
            try:
                self._hook(kind, payload)
            except BaseException as e:  # stop the workers, then re-raise on this thread
                self.error = e
                self._stop()

    def _hook(self, kind: str, payload: Any) -> None:
        step = payload[0]
        if step <= self.last[kind]:  # a restarted worker group repeats steps since its checkpoint
            return
        self.last[kind] = step
        if kind == "step":
            if isinstance(self.hooks, StepClock):  # rank 0's time at the step's end, not this thread's
                self.hooks.stamp(payload[2])
            else:
                self.hooks.on_step(step, payload[1])
            if self.hooks.should_stop():
                self._stop()
        elif kind == "eval":
            self.hooks.on_eval(step, payload[1])
        elif kind == "checkpoint":
            _, blob, synset = payload
            path = self._write_checkpoint(blob)
            self.hooks.on_checkpoint(step, path, synset)

    def _write_checkpoint(self, blob: bytes) -> Path:
        path = self.workdir / CHECKPOINT
        atomic_write(path, blob)
        return path

    def _stop(self) -> None:
        if not self.stop_sent:
            self.sink.request_stop.remote()
            self.stop_sent = True


def drive(trainer, sink, driver: Driver) -> BaseException | None:
    """Run ``trainer.fit()`` on a thread while this thread hands the sink's events to ``driver``.

    Returns the exception ``fit`` raised (None if it returned, or once rank 0's result is in).
    """
    import ray

    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            failure.append(e)

    thread = threading.Thread(target=fit, name="cmidd-ray-train", daemon=True)
    thread.start()
    ended = None
    try:
        while True:
            alive = thread.is_alive()
            for kind, payload in ray.get(sink.take.remote()):
                driver.handle(kind, payload)
            if not alive:
                break
            if driver.done is not None or isinstance(driver.error, CmiddError):
                ended = ended or time.monotonic()
                if time.monotonic() - ended > FINISH_GRACE_S:
                    break  # the workers are done; the controller still waits on Ray's placement group cleaner
            thread.join(0.05)
    except BaseException:  # e.g. Ctrl-C: the workers on a cluster stop at their next step
        sink.request_stop.remote()
        raise
    return failure[0] if failure else None


def outcome(driver: Driver, failure: BaseException | None, max_failures: int) -> tuple[SyntheticSet, History]:
    """Rank 0's result, or the error that ended the run (a worker's ``CmiddError`` as its own class)."""
    if driver.error is not None:
        raise driver.error
    if failure is not None:
        raise CmiddError(f"Ray Train failed (scaling.max_failures={max_failures}): {failure}")
    if driver.done is None:
        raise CmiddError("Ray Train finished without a result from rank 0")
    synset, hist = driver.done
    return synset, History(**hist)

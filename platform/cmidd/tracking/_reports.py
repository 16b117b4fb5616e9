"""Runs as tables and reports as runs: ``cmidd runs`` and the bench report run of ``cmidd bench``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..config import flatten
from ..errors import UnknownNameError
from ..lam import fmt_lam, lam_of
from ._client import DEFAULT_METRIC, client_for, log_metrics, metrics_at, mlflow_errors, open_run, resolve_uri
from ._tags import run_tags


def list_runs(uri: str | None = None, n: int = 20, experiment: str | None = None) -> list[dict[str, Any]]:
    """The ``n`` most recent runs (of ``experiment``, or of all), newest first, as table rows.

    Returns:
        [{"run_id", "experiment", "name", "kind", "status", "start", "dataset", "ipc", "method", "lambda",
        "acc", "protocol"}] with acc = acc/cross_arch_mean or None, protocol the id of the evaluation protocol
        that scored the run (``-`` for runs that score nothing).
    """
    with mlflow_errors():
        client = client_for(resolve_uri(uri))
        exps = {e.experiment_id: e.name for e in client.search_experiments()}
        if experiment is not None:
            exps = {i: name for i, name in exps.items() if name == experiment}
            if not exps:
                raise UnknownNameError(f"no experiment {experiment!r} in this store")
        if not exps:
            return []
        runs = client.search_runs(list(exps), order_by=["attributes.start_time DESC"], max_results=n)
    return [
        {
            "run_id": r.info.run_id, "experiment": exps[r.info.experiment_id], "name": r.info.run_name,
            "kind": r.data.tags.get("kind", "-"), "status": r.info.status,
            "start": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.info.start_time / 1000)),
            "dataset": r.data.tags.get("dataset", "-"), "ipc": r.data.tags.get("ipc", "-"),
            "method": r.data.tags.get("method", "-"), "lambda": _lambda(r),
            "acc": r.data.metrics.get(DEFAULT_METRIC), "protocol": r.data.tags.get("protocol.id", "-"),
        }
        for r in runs
    ]


def _lambda(run) -> str:
    """A distill run's effective lambda (``cmidd.lam``, 3 significant digits), else its ``lambda`` tag or ``-``."""
    if run.data.tags.get("kind") == "distill" and "cmi.lam" in run.data.params:
        return fmt_lam(lam_of(run.data.params, run.data.metrics))
    return run.data.tags.get("lambda", "-")


def log_report(uri: str, experiment: str, run_name: str, params: dict[str, Any], metrics: dict[str, float],
               folder: Path, files: list[str]) -> str:
    """One finished run of kind ``report``: flat params, scalar metrics, and ``files`` from ``folder``.

    Args:
        uri: tracking URI (already resolved).
        experiment: experiment name (``cmidd-bench``).
        run_name: the run's name.
        params: the report's settings (nested; flattened, values cut at 6000 characters).
        metrics: scalar metrics, logged at step 0.
        folder: where ``files`` are.
        files: artifact file names in ``folder``.

    Returns:
        The run id; a failure leaves the run FAILED.
    """
    client = client_for(uri)
    params = {k: str(v)[:6000] for k, v in flatten(params).items()}
    with open_run(client, experiment, run_name, tags=run_tags("report"), params=params) as run:
        with mlflow_errors():
            log_metrics(client, run.run_id, metrics_at(0, metrics))
            for name in files:
                client.log_artifact(run.run_id, str(folder / name))
    return run.run_id

"""The app's composition root: run one job with the loop it asks for, tracked in MLflow or not.

``cmidd run``, ``cmidd demo`` and the bench's quality suite all call ``execute``. It makes the two choices
that the layers below leave open:

- the loop: the plain ``distill`` or Ray Train for ``scaling.workers > 1`` (``cmidd.ray.pick_loop``;
  the core ``cmidd.runner`` is handed the loop and never imports Ray), on the Ray cluster at ``address``;
- the record: ``cmidd.tracking.tracked_run`` (an MLflow run, its artifacts, the registered set) or none.

mlflow and ray are imported only on the path that needs them, so untracked single-process jobs run
without the platform packages.

Example:
    >>> from cmidd.config import load_job
    >>> done = execute(load_job("jobs/distill_dm_digits_ipc10.yaml"), track=True)
    >>> done.result.metrics["acc/cross_arch_mean"], done.run_id
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .distill import distill
from .errors import ConfigError
from .ray import pick_loop, run_job
from .synthetic import SetDataset, SyntheticSet

if TYPE_CHECKING:
    from .data import Dataset
    from .distill import Hooks
    from .runner import JobResult


@dataclass
class Execution:
    """A finished job: its result and, when tracked, its MLflow run and the versions it registered.

    Attributes:
        result: what the job produced (metrics, rows, the synthetic set, paths).
        run_id: the MLflow run (None when untracked).
        uri: the resolved tracking URI (None when untracked).
        versions: ``[{"name", "version", "alias"}]`` registered by the run (empty when untracked).
    """

    result: JobResult
    run_id: str | None = None
    uri: str | None = None
    versions: list[dict[str, Any]] = field(default_factory=list)


def quiet_mlflow() -> None:
    """No progress bars for small artifact downloads, no deprecation notices from MLflow's own internals.

    ``cmidd.cli.main`` shows DeprecationWarnings to cmidd's users; MLflow's are not theirs to act on.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(mlflow|sqlalchemy|alembic)(\.|$)")


def tracking_uri(uri: str | None) -> str:
    """The MLflow store to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` here.

    Raises:
        ConfigError: a URI cmidd cannot use (file stores, in-memory sqlite).
    """
    quiet_mlflow()
    from .tracking import resolve_uri

    return resolve_uri(uri)


def load_set(name_or_path: str | Path, version: int | None = None, alias: str | None = None,
             uri: str | None = None) -> SetDataset:
    """A distilled set as a verified ``torch.utils.data.Dataset``: a folder (``cmidd pull --out``, a run's
    ``synthetic/``) or a registered set ``DATASET/IPC`` (the champion unless ``version`` or ``alias``).

    Raises:
        ConfigError: neither a folder nor ``DATASET/IPC``.
        IntegrityError: a checksum does not match.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return SyntheticSet.load(path).dataset()
    dataset, _, ipc = str(name_or_path).partition("/")
    if not dataset or not ipc.isdigit():
        raise ConfigError(f"load_set: a folder or DATASET/IPC (e.g. digits/10) is needed, got {str(name_or_path)!r}")
    quiet_mlflow()
    from .tracking import load_set as registered

    return registered(dataset, int(ipc), version, alias, tracking_uri(uri)).dataset()


def needs_ray(job) -> bool:
    """True for a distill job with ``scaling.workers > 1`` (run by Ray Train)."""
    return pick_loop(job) is not distill


def execute(job, *, track: bool = False, uri: str | None = None, address: str | None = None,
            resume: bool = False, resume_run_id: str | None = None, hooks: Hooks | None = None,
            data: Dataset | None = None, experiment: str | None = None,
            resume_hint: str | None = None) -> Execution:
    """Run a validated job of any kind with the right loop, in an MLflow run when ``track``.

    Args:
        job: a validated job (``cmidd.config.load_job``).
        track: log the job as an MLflow run and register what it produced.
        uri: the MLflow store when tracked (``tracking_uri`` rules).
        address: the Ray cluster for Ray Train jobs (``auto`` or ``HOST:PORT``; default ``$RAY_ADDRESS``,
            else a local Ray started by the loop). Ignored for single-process jobs.
        resume: continue from the job's local checkpoint.
        resume_run_id: continue this MLflow run from its last checkpoint (tracked only).
        hooks: extra loop hooks (reporting, stopping rules).
        data: the loaded data set (loaded from ``job.data`` if None).
        experiment: the MLflow experiment when tracked (default: the job's name); the demo puts its sets and
            their baseline in one, side by side.
        resume_hint: the command that resumes this job (named when a tracking outage ends it).

    Returns:
        Execution.

    Raises:
        ConfigError: bad input (before anything is written), including an unreachable ``address``.
        CmiddError: the job, Ray or MLflow failed (a tracked run is then FAILED).
    """
    if address is not None and needs_ray(job):
        from .ray import connect

        connect(address)
    if not track:
        return Execution(run_job(job, hooks, resume, data))
    quiet_mlflow()
    from .tracking import tracked_run

    done = tracked_run(job, uri, resume_run_id=resume_run_id, resume=resume, hooks=hooks, data=data,
                       loop=pick_loop(job), experiment=experiment, resume_hint=resume_hint)
    return Execution(done.result, done.run_id, done.uri, list(done.versions))

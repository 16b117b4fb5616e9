"""The MLflow client, batched logging, and the one run lifecycle every tracked run goes through.

``open_run`` is that lifecycle: it creates a run (or takes one already set RUNNING), yields a ``RunSession``,
and ends the run FINISHED when the body returns. When the body raises, the registry versions the session
recorded are deleted, the error goes into the tag ``cmidd.error``, and the run ends FAILED (KILLED on Ctrl-C
or ``SystemExit``); the error is re-raised. Job runs, search parent runs, ensemble builds and bench report
runs all use it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import CmiddError, ConfigError, UnknownNameError
from ..names import CROSS_ARCH_MEAN
from ..redact import redact, split_credentials
from ._bounds import bound_http_calls

try:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise CmiddError("cmidd.tracking needs mlflow: pip install 'cmidd[platform]'") from _e

log = logging.getLogger(__name__)

CHAMPION = "champion"
DEFAULT_METRIC = CROSS_ARCH_MEAN
# The experiment kind MLflow 3's UI reads (values in its bundle: genai_development, custom_model_development, ...):
# earlier 3.x UIs open an experiment of this kind in the model-training view. MLflow 3.17's UI ignores the tag (its
# "GenAI | Model training" switch decides, default GenAI): cmidd's links add ?workflowType=machine_learning (_ui)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
SYNTHETIC = "synthetic"
PROXIES = "proxies"
EXPERTS = "experts"
TAG_ERROR = "cmidd.error"
_STORE_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
_BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits per call


def resolve_uri(cli_uri: str | None = None) -> str:
    """The tracking URI: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (cwd).

    A relative sqlite path is made absolute (workers may run elsewhere). The ``file:`` store is refused:
    MLflow 3 keeps it in maintenance mode and it has no model registry. Credentials in an http(s) URI
    (``http://USER:PASSWORD@HOST:PORT``) are taken out of it into this process's ``MLFLOW_TRACKING_USERNAME`` and
    ``MLFLOW_TRACKING_PASSWORD`` (MLflow's own variables): the URI returned holds none, so nothing that prints,
    writes or ships it on (messages, ``mlflow_run.json``, run tags, Ray trials) can leak them.

    Raises:
        ConfigError: a file store, an in-memory sqlite database or an unknown scheme.
    """
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    scheme = "databricks" if uri == "databricks" else urlparse(uri).scheme
    if scheme not in _STORE_SCHEMES:
        raise ConfigError(
            f"--tracking-uri: must be sqlite:///PATH.db or an mlflow server http(s)://HOST:PORT (the file "
            f"store is not supported), but got {redact(uri)!r}"
        )
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise ConfigError(f"--tracking-uri: an in-memory sqlite store keeps nothing; got {uri!r}")
        uri = f"sqlite:///{Path(path).absolute()}"
    if scheme in ("http", "https"):
        uri, user, password = split_credentials(uri)
        for name, value in ((CREDENTIAL_ENV[0], user), (CREDENTIAL_ENV[1], password)):
            if value is not None:
                os.environ[name] = value
    return uri


# MLflow's documented client credentials (basic auth: user + password; or a bearer token)
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def credentials_env() -> dict[str, str]:
    """The MLflow client credentials this process holds (``CREDENTIAL_ENV`` that are set): what a Ray trial on
    another node needs to reach the same server (``cmidd.app.run_search`` ships them to the trials through Ray's
    object store)."""
    return {k: os.environ[k] for k in CREDENTIAL_ENV if os.environ.get(k)}


_READY: set[str] = set()  # sqlite stores this process has seen created (their tables exist)


@contextlib.contextmanager
def store_lock(db: Path) -> Iterator[None]:
    """An exclusive lock on ``<db>.lock`` beside a sqlite store (``filelock``: an OS lock, released if the holder
    dies)."""
    from filelock import FileLock

    with FileLock(db.with_name(db.name + ".lock")):
        yield


def client_for(uri: str) -> MlflowClient:
    """An ``MlflowClient`` on ``uri`` for tracking and registry (creates a sqlite file's folder).

    A sqlite store is created once, under a file lock, by whichever process comes first: MLflow creates the
    tables of a fresh store when a client first touches it, and two processes doing so at once collide
    ("duplicate column name", a failed alembic migration). The others wait, then find the tables there.
    An http(s) server is asked once per process whether it answers and takes the credentials (``check_server``).
    """
    if uri.startswith(("http://", "https://")):
        bound_http_calls()  # one call ends in seconds, not minutes: the outage budget decides how long to wait
    if uri in _READY or not uri.startswith(("sqlite:///", "http://", "https://")):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    if not uri.startswith("sqlite:///"):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        check_server(client, uri)
        _READY.add(uri)
        return client
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with store_lock(db), mlflow_errors():
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # makes the tracking store (and its tables)
        client.search_registered_models(max_results=1)  # makes the registry's store, in the same file
    _READY.add(uri)
    return client


_AUTH_ERRORS = ("UNAUTHENTICATED", "PERMISSION_DENIED")


def check_server(client: MlflowClient, uri: str) -> None:
    """One cheap call to an MLflow server, so that a wrong password or a server that is down is one line naming
    the server before anything is written.

    Raises:
        ConfigError: the server refused the credentials (exit 2: bad input).
        CmiddError: the server did not answer.
    """
    try:
        client.search_experiments(max_results=1)
    except MlflowException as e:
        if e.error_code in _AUTH_ERRORS:
            raise ConfigError(
                f"--tracking-uri: the MLflow server {uri} refused the credentials ({e.error_code}): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (docs/security.md)") from None
        first = (redact(e.message).strip().splitlines() or [""])[0][:300]
        raise CmiddError(f"--tracking-uri: the MLflow server {uri} did not answer: {first}") from None


@contextlib.contextmanager
def mlflow_errors() -> Iterator[None]:
    """Turn MLflow's exceptions into ``CmiddError`` (a missing resource into ``UnknownNameError``)."""
    try:
        yield
    except MlflowException as e:
        cls = UnknownNameError if e.error_code == "RESOURCE_DOES_NOT_EXIST" else CmiddError
        raise cls(f"mlflow: {redact(e.message)}") from e


def ensure_experiment(name: str, uri: str | None = None, client: MlflowClient | None = None) -> str:
    """The id of experiment ``name``, created if missing (the driver calls this before workers log).

    Raises:
        CmiddError: the experiment exists but is deleted.
    """
    client = client or client_for(resolve_uri(uri))
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as e:  # another process created it first
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage != "active":
        raise CmiddError(
            f"experiment {name!r} is deleted; restore it (mlflow experiments restore) or rename the job"
        )
    return exp.experiment_id


def ensure_model(client: MlflowClient, name: str, description: str, tags: dict[str, str]) -> None:
    """Create the registered model ``name`` unless it exists (another process may create it first)."""
    try:
        client.create_registered_model(name, tags=tags, description=description)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


# ----------------------------------------------------------------------------------------------------
# batched logging


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    """``log_batch`` in chunks of MLflow's per-call limit."""
    for chunk in _chunks(metrics, _BATCH["metrics"]):
        client.log_batch(run_id, metrics=chunk, synchronous=True)


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Params in chunks of MLflow's per-call limit."""
    for chunk in _chunks([Param(k, v) for k, v in params.items()], _BATCH["params"]):
        client.log_batch(run_id, params=chunk, synchronous=True)


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    """Run tags in chunks of MLflow's per-call limit (values as ``str``)."""
    for chunk in _chunks([RunTag(k, str(v)) for k, v in tags.items()], _BATCH["tags"]):
        client.log_batch(run_id, tags=chunk, synchronous=True)


def metrics_at(step: int, values: dict[str, float]) -> list[Metric]:
    """``values`` as MLflow metrics at ``step``, timestamped now."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]


# ----------------------------------------------------------------------------------------------------
# the run lifecycle


def end_run(client: MlflowClient, run_id: str, status: str) -> None:
    """Set the run's final status (``FINISHED``, ``FAILED`` or ``KILLED``)."""
    with contextlib.redirect_stdout(sys.stderr):  # MLflow prints "View run ..." for servers: keep stdout
        client.set_terminated(run_id, status)


def fail_run(client: MlflowClient, run_id: str, error: BaseException, versions: list[dict[str, Any]],
             status: str | None = None) -> None:
    """Best effort: delete the registry versions this run created, tag the error, end the run.

    The status is ``status`` if given, else KILLED on Ctrl-C or ``SystemExit`` (how Ray Tune ends a trial
    that a scheduler stopped, possibly after the search's driver already marked that run KILLED: so both
    orders end KILLED), else KILLED for a run the driver already tagged stopped (a stopped trial with Ray Train
    workers dies of its workers' error, not of SystemExit), else FAILED.
    """
    from ..errors import TrackingOutage
    from ..names import TAG_STOPPED

    status = status or ("KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED")
    if isinstance(error, TrackingOutage):  # the store is down by definition (each call would wait out its timeout):
        return  # the run stays RUNNING, and the resume command the error line names ends it
    try:
        if status == "FAILED" and client.get_run(run_id).data.tags.get(TAG_STOPPED) == "true":
            status = "KILLED"
        for v in versions:
            if not v.get("existing"):  # a version an earlier run made for the same set stays
                client.delete_model_version(v["name"], str(v["version"]))
        set_tags(client, run_id, {TAG_ERROR: f"{type(error).__name__}: {error}"[:5000]})
        end_run(client, run_id, status)
    except Exception as e:  # the original error matters more than this one
        log.warning("could not mark run %s %s: %s", run_id, status,
                    str(e).strip().splitlines()[0] if str(e).strip() else e)


@dataclass
class RunSession:
    """An open MLflow run inside ``open_run``.

    Attributes:
        client: the client of the run's store.
        run_id: the run.
        versions: registry versions created for this run ({"name", "version", "alias"}); deleted if the body
            fails. Registration functions append to it as soon as a version exists.
        fail_status: the status a failure ends the run with (None: FAILED, KILLED on Ctrl-C).
    """

    client: MlflowClient
    run_id: str
    versions: list[dict[str, Any]] = field(default_factory=list)
    fail_status: str | None = None


@contextlib.contextmanager
def open_run(client: MlflowClient, experiment: str | None = None, run_name: str | None = None,
             tags: dict[str, str] | None = None, params: dict[str, str] | None = None,
             run_id: str | None = None) -> Iterator[RunSession]:
    """The one MLflow run lifecycle: open -> yield -> FINISHED | FAILED/KILLED with version clean-up.

    Args:
        client: the store's client.
        experiment: experiment of a new run (created if missing).
        run_name: name of a new run.
        tags: tags of a new run (set at creation), or set on ``run_id``.
        params: params to log first (a failure here already ends the run FAILED).
        run_id: an existing run, already set RUNNING by the caller (a resumed job or search), instead of a
            new one.

    Yields:
        RunSession.

    Raises:
        CmiddError: MLflow failed to create the run (nothing to clean up then); whatever the body raises.

    Example:
        >>> with open_run(client, "cmidd-bench", "bench-quick", tags=run_tags("report")) as run:
        ...     log_metrics(client, run.run_id, metrics_at(0, {"x": 1.0}))
    """
    with mlflow_errors():
        if run_id is None:
            exp_id = ensure_experiment(experiment, client=client)
            run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
            tags = None
    session = RunSession(client, run_id)
    try:
        with mlflow_errors():
            if tags:
                set_tags(client, run_id, tags)
            if params:
                log_params(client, run_id, params)
        yield session
        with mlflow_errors():
            end_run(client, run_id, "FINISHED")
    except BaseException as e:
        fail_run(client, run_id, e, session.versions, session.fail_status)
        raise

"""MLflow as the system of record: one place that owns the run lifecycle of every job kind.

What a job leaves in MLflow (see DESIGN.md, "MLflow conventions")::

    experiment   the job's name (or the search's), created by the driver before any worker logs
    params       the flattened config (``cmidd.config.flatten``)
    tags         kind, dataset, ipc, method, lambda, proxy_set, code_version (cmidd version + git sha)
    metrics      loss_dd, cmi, loss_total per iteration (step = iteration); acc/<arch>, acc_std/<arch>,
                 acc/cross_arch_mean, acc/ensemble, ece/ensemble at eval steps and at the end; time/distill_s,
                 time/eval_s, ...
    artifacts    synthetic/{images.pt, labels.pt, manifest.json, grid.png}, result.json, history.json;
                 checkpoints/{0,1}/{checkpoint.pt, synthetic/}: two slots written in turn, the run tag
                 ``cmidd.checkpoint.slot`` names the last *complete* one (a kill mid-upload spoils only
                 the other slot); pretrain-proxies jobs: proxies/ (one sub-folder per proxy)
    registry     ``distilled-<dataset>-ipc<k>``: one version per distill run, source
                 ``runs:/<run>/synthetic``, tags with its method, lambda, proxy set and accuracies; the
                 alias ``champion`` is on the best version by acc/cross_arch_mean. Ensembles of sets
                 (``cmidd.ensemble_tracking``) register here too, tagged ``ensemble_of``.
                 ``proxy-<dataset>-<arch>``: one version per proxy, source ``runs:/<run>/proxies/<stem>``.

Registration comes last: artifacts are uploaded, downloaded again and checked against the manifest's
sha256 first, so no version ever points at missing or partial files. Any exception ends the run FAILED
(KILLED on Ctrl-C), removes a version it had created, and is re-raised.

Every function takes the tracking URI explicitly (``resolve_uri``) and talks to MLflow through its own
``MlflowClient``: nothing here sets MLflow's global tracking URI or active run, so notebooks, threads
and Ray workers do not step on each other.

Example:
    >>> from cmidd.tracking import tracked_run, best_set, load_set
    >>> tracked = tracked_run(load_job("jobs/distill_dm_digits_ipc10.yaml"), uri="sqlite:///mlflow.db")
    >>> best_set("digits", 10)["metrics"]["acc/cross_arch_mean"]
    >>> synset = load_set("digits", 10)  # the champion, checksums verified
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import __version__
from . import proxies as proxy_zoo
from .config import flatten
from .distill import CHECKPOINT, Hooks, History
from .errors import CmiddError, ConfigError, IntegrityError, UnknownNameError
from .launch import run_job
from .runner import JobResult, check_ipc, load_job_data
from .synthetic import MANIFEST, SyntheticSet, replace_dir, sha256_file

try:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise CmiddError("cmidd.tracking needs mlflow: pip install 'cmidd[platform]'") from _e

log = logging.getLogger(__name__)

CHAMPION = "champion"
DEFAULT_METRIC = "acc/cross_arch_mean"
SYNTHETIC = "synthetic"
PROXIES = "proxies"
CHECKPOINT_SLOTS = ("checkpoints/0", "checkpoints/1")
TAG_SLOT, TAG_STEP, TAG_SHA = "cmidd.checkpoint.slot", "cmidd.checkpoint.step", "cmidd.checkpoint.sha256"
_STORE_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
_BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits per call


# ----------------------------------------------------------------------------------------------------
# URI, client, experiment, tags


def resolve_uri(cli_uri: str | None = None) -> str:
    """The tracking URI: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (cwd).

    A relative sqlite path is made absolute (workers may run elsewhere). The ``file:`` store is refused:
    MLflow 3 keeps it in maintenance mode and it has no model registry.

    Raises:
        ConfigError: a file store, an in-memory sqlite database or an unknown scheme.
    """
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    scheme = "databricks" if uri == "databricks" else urlparse(uri).scheme
    if scheme not in _STORE_SCHEMES:
        raise ConfigError(
            f"--tracking-uri: must be sqlite:///PATH.db or an mlflow server http(s)://HOST:PORT (the file "
            f"store is not supported), but got {uri!r}"
        )
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise ConfigError(f"--tracking-uri: an in-memory sqlite store keeps nothing; got {uri!r}")
        uri = f"sqlite:///{Path(path).absolute()}"
    return uri


def client_for(uri: str) -> MlflowClient:
    """An ``MlflowClient`` on ``uri`` for tracking and registry (creates a sqlite file's folder)."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def mlflow_errors() -> Iterator[None]:
    """Turn MLflow's exceptions into ``CmiddError`` (a missing resource into ``UnknownNameError``)."""
    try:
        yield
    except MlflowException as e:
        cls = UnknownNameError if e.error_code == "RESOURCE_DOES_NOT_EXIST" else CmiddError
        raise cls(f"mlflow: {e.message}") from e


def ensure_experiment(name: str, uri: str | None = None, client: MlflowClient | None = None) -> str:
    """The id of experiment ``name``, created if missing (the driver calls this before workers log).

    Raises:
        CmiddError: the experiment exists but is deleted.
    """
    client = client or client_for(resolve_uri(uri))
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name)
        except MlflowException as e:  # another process created it first
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage != "active":
        raise CmiddError(
            f"experiment {name!r} is deleted; restore it (mlflow experiments restore) or rename the job"
        )
    return exp.experiment_id


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The git commit of the cmidd source tree (``+dirty`` when it has uncommitted changes), or None."""
    here = str(Path(__file__).parent)
    try:
        sha = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def code_version() -> str:
    """``<cmidd version>+g<sha12>[.dirty]``, or the plain version outside a git checkout."""
    sha = git_sha()
    if sha is None:
        return __version__
    return f"{__version__}+g{sha[:12]}" + (".dirty" if sha.endswith("+dirty") else "")


def job_params(job) -> dict[str, str]:
    """The flattened config as MLflow params (lists as JSON, everything else as ``str``)."""
    flat = flatten(job.model_dump(mode="json"))
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in flat.items()}


def proxy_label(job) -> str:
    """What a distill job's proxies were: ``none`` (lambda 0), the registry reference, or the set name."""
    if job.cmi.lam == 0:
        return "none"
    return job.proxies.from_registry or job.proxies.set


def job_tags(job) -> dict[str, str]:
    """Run tags: kind, dataset, code version, and for distill jobs ipc, method, lambda and proxy set."""
    tags = {
        "kind": job.kind, "dataset": job.data.name, "code_version": code_version(),
        "mlflow.source.name": "cmidd", "mlflow.source.type": "LOCAL",
    }
    if git_sha():
        tags["mlflow.source.git.commit"] = git_sha().removesuffix("+dirty")
    with contextlib.suppress(Exception):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    if job.kind == "distill":
        tags.update(ipc=str(job.ipc), method=job.method.name, **{"lambda": str(job.cmi.lam)},
                    proxy_set=proxy_label(job))
    return tags


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    """``log_batch`` in chunks of MLflow's per-call limit."""
    for chunk in _chunks(metrics, _BATCH["metrics"]):
        client.log_batch(run_id, metrics=chunk, synchronous=True)


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    for chunk in _chunks([Param(k, v) for k, v in params.items()], _BATCH["params"]):
        client.log_batch(run_id, params=chunk, synchronous=True)


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    for chunk in _chunks([RunTag(k, str(v)) for k, v in tags.items()], _BATCH["tags"]):
        client.log_batch(run_id, tags=chunk, synchronous=True)


def metrics_at(step: int, values: dict[str, float]) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]


# ----------------------------------------------------------------------------------------------------
# Hooks: per-step metrics in batches, eval metrics, checkpoints as artifacts


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


# ----------------------------------------------------------------------------------------------------
# The tracked run


@dataclass
class TrackedRun:
    """A finished tracked job: its result, its MLflow run and the version it registered (if any)."""

    result: JobResult
    run_id: str
    uri: str
    versions: list[dict[str, Any]]  # [{"name", "version", "alias"}], empty for evaluate jobs


def tracked_run(job, uri: str | None = None, resume_run_id: str | None = None, resume: bool = False,
                hooks: Hooks | None = None, data=None, experiment: str | None = None,
                parent_run_id: str | None = None, register: bool = True,
                tags: dict[str, str] | None = None) -> TrackedRun:
    """Run a validated job inside an MLflow run, log everything, verify the artifacts, then register.

    Args:
        job: a ``DistillJob``, ``PretrainProxiesJob`` or ``EvaluateJob``.
        uri: tracking URI (``resolve_uri`` rules).
        resume_run_id: continue this run from its last checkpoint in MLflow (downloaded into
            ``job.output.dir``); the config must equal the run's params.
        resume: without ``resume_run_id``: continue from the local checkpoint, in a new run.
        hooks: extra loop hooks (Tune reports, stopping rules), called after logging.
        data: the loaded data set (loaded from ``job.data`` if None).
        experiment: experiment name (default ``job.name``); a search passes its own.
        parent_run_id: the search's run, for trial runs (tag ``mlflow.parentRunId``).
        register: register the distilled set (a search registers only its top-k trials, at the end).
        tags: extra run tags (a search's trial id, the node it ran on).

    Returns:
        TrackedRun.

    Raises:
        ConfigError: bad input (unknown run to resume, changed config, bad URI, ...), before any run starts.
        CmiddError: the job or MLflow failed; the run is then FAILED.
    """
    uri = resolve_uri(uri)
    data = data if data is not None else load_job_data(job)
    _precheck(job, data)  # bad input fails before the store is touched: nothing written
    client = client_for(uri)
    with mlflow_errors():
        local = resolve_registry_proxies(job, data, uri, client)  # params and tags keep the job as given
        if resume_run_id:
            run_id, hooks_ml = _reopen(client, job, resume_run_id, hooks)
        else:
            run_id, hooks_ml = _open(client, job, hooks, experiment or job.name, parent_run_id)
        if tags:
            set_tags(client, run_id, tags)
    versions: list[dict[str, Any]] = []  # filled as versions are created, so that a failure removes them
    try:
        if local is not job:
            set_tags(client, run_id, {"proxies.local_dir": str(local.proxies.dir)})
        result = run_job(local, hooks_ml, resume=bool(resume_run_id) or resume, data=data)
        with mlflow_errors():
            hooks_ml.flush()
            _log_result(client, run_id, result, hooks_ml)
            _publish(client, run_id, job, result, versions, register)
            end_run(client, run_id, "FINISHED")
    except BaseException as e:
        fail_run(client, run_id, e, versions)
        raise
    return TrackedRun(result, run_id, uri, versions)


def _precheck(job, data) -> None:
    """The runner's data-dependent rules that can be checked before a run exists (raise DataError)."""
    if job.kind == "distill" or (job.kind == "evaluate" and "random-real" in job.eval.baselines):
        check_ipc(job.ipc, data)


def _open(client: MlflowClient, job, hooks: Hooks | None, experiment: str, parent: str | None):
    """A new RUNNING run with the job's tags and params."""
    exp_id = ensure_experiment(experiment, client=client)
    tags = job_tags(job) | ({"mlflow.parentRunId": parent} if parent else {})
    run_id = client.create_run(exp_id, run_name=job.name, tags=tags).info.run_id
    try:
        log_params(client, run_id, job_params(job))
    except BaseException as e:
        fail_run(client, run_id, e, [])
        raise
    log.info("mlflow run %s in experiment %r", run_id, experiment)
    return run_id, MlflowHooks(client, run_id, inner=hooks)


def _reopen(client: MlflowClient, job, run_id: str, hooks: Hooks | None):
    """Check that ``run_id`` can be resumed by ``job``, fetch its checkpoint, set it RUNNING again."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"--resume-run: no run {run_id!r} in this tracking store") from None
    if job.kind != "distill":
        raise ConfigError(f"--resume-run: only distill jobs checkpoint; this is a {job.kind!r} job")
    if run.info.status == "FINISHED":
        raise ConfigError(f"--resume-run: run {run_id} is already FINISHED; nothing to resume")
    if run.data.tags.get("kind") != job.kind:
        kind = run.data.tags.get("kind")
        raise ConfigError(f"--resume-run: run {run_id} is a {kind!r} job, not {job.kind!r}")
    changed = sorted(k for k, v in job_params(job).items() if run.data.params.get(k, v) != v)
    if changed:
        diff = ", ".join(f"{k}={run.data.params[k]!r}->{job_params(job)[k]!r}" for k in changed[:5])
        raise ConfigError(f"--resume-run: the config differs from run {run_id}'s params: {diff}")
    slot = run.data.tags.get(TAG_SLOT)
    if slot:
        _fetch_checkpoint(client, run_id, slot, run.data.tags[TAG_SHA], job.output.dir)
        log.info("resuming run %s from its checkpoint at step %s", run_id, run.data.tags.get(TAG_STEP))
    logged = [m.step for m in client.get_metric_history(run_id, "loss_dd")]
    client.update_run(run_id, status="RUNNING")
    set_tags(client, run_id, {"cmidd.resumed_from_step": run.data.tags.get(TAG_STEP, "0")})
    return run_id, MlflowHooks(client, run_id, inner=hooks, skip_through=max(logged, default=0), slot=slot)


def _fetch_checkpoint(client: MlflowClient, run_id: str, slot: str, sha: str, outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=outdir, prefix=".ckpt-") as tmp:
        got = Path(client.download_artifacts(run_id, f"{slot}/{CHECKPOINT}", tmp))
        if sha256_file(got) != sha:
            raise IntegrityError(
                f"runs:/{run_id}/{slot}/{CHECKPOINT}: sha256 mismatch with the run's tag {TAG_SHA}"
            )
        os.replace(got, outdir / CHECKPOINT)


def _log_result(client: MlflowClient, run_id: str, result: JobResult, hooks: MlflowHooks) -> None:
    """Final metrics (at the last step), curves the hooks did not see, result.json and history.json."""
    history = result.history
    if history is not None:
        log_metrics(client, run_id, _backfill(history, hooks.first_step, hooks.skip_through))
    last = history.step[-1] if history is not None and history.step else 0
    log_metrics(client, run_id, metrics_at(last, {k: v for k, v in result.metrics.items()
                                                   if isinstance(v, (int, float))}))
    for name in ("result.json", "history.json"):
        if (result.outdir / name).is_file():
            client.log_artifact(run_id, str(result.outdir / name))


def _backfill(history: History, first_seen: int | None, skip_through: int) -> list[Metric]:
    """Points of ``history`` before the first step the hooks saw (a local ``--resume`` restored them)."""
    first = first_seen if first_seen is not None else (history.step[-1] + 1 if history.step else 0)
    out: list[Metric] = []
    for i, step in enumerate(history.step):
        if skip_through < step < first:
            vals = {"loss_dd": history.loss_dd[i], "loss_total": history.loss_total[i]}
            if history.cmi[i] == history.cmi[i]:  # not NaN: CMI was computed at this step
                vals["cmi"] = history.cmi[i]
            out += metrics_at(step, vals)
    for ev in history.evals:
        if skip_through < ev["step"] < first:
            out += metrics_at(int(ev["step"]), {k: v for k, v in ev.items() if k != "step"})
    return out


def _publish(client: MlflowClient, run_id: str, job, result: JobResult, created: list[dict[str, Any]],
             register: bool = True):
    """Upload the job's artifacts, verify them by download, then register (distill and proxies only).

    Each registered version is appended to ``created`` as soon as it exists. ``register=False`` uploads and
    verifies a distilled set without registering it (search trials).
    """
    if job.kind == "distill":
        client.log_artifacts(run_id, str(result.outdir / SYNTHETIC), SYNTHETIC)
        verify_remote_set(client, run_id, SYNTHETIC, result.synset.sha256())
        if register:
            register_set(client, run_id, job, result, created)
    elif job.kind == "pretrain-proxies":
        publish_proxies(client, run_id, job, Path(result.extra["proxies_dir"]), created)
    elif job.kind == "experts":
        publish_experts(client, run_id, Path(result.extra["experts_dir"]), created)


def verify_remote_set(client: MlflowClient, run_id: str, path: str, content_sha256: str) -> None:
    """Download ``runs:/run_id/path`` and check every sha256 and that it holds the set we uploaded.

    Raises:
        IntegrityError: a file is missing or altered, or the content is another set.
    """
    with tempfile.TemporaryDirectory(prefix="cmidd-verify-") as tmp:
        got = Path(client.download_artifacts(run_id, path, tmp))
        synset = load_verified(got, f"runs:/{run_id}/{path}")
        if synset.sha256() != content_sha256:
            raise IntegrityError(f"runs:/{run_id}/{path}: uploaded set differs from the distilled one")
        if not (got / "grid.png").is_file():
            raise IntegrityError(f"runs:/{run_id}/{path}: grid.png is missing")


def load_verified(folder: Path, label: str) -> SyntheticSet:
    """``SyntheticSet.load`` with the error naming ``label`` instead of a temporary folder."""
    try:
        return SyntheticSet.load(folder)
    except IntegrityError as e:
        raise IntegrityError(str(e).replace(str(folder), label)) from None


def end_run(client: MlflowClient, run_id: str, status: str) -> None:
    with contextlib.redirect_stdout(sys.stderr):  # MLflow prints "View run ..." for servers: keep stdout
        client.set_terminated(run_id, status)


def fail_run(client: MlflowClient, run_id: str, error: BaseException, versions: list[dict[str, Any]]) -> None:
    """Best effort: delete versions this run created, tag the error, end the run FAILED (KILLED on Ctrl-C, or
    on SystemExit: how Ray Tune ends a trial that a scheduler stopped, possibly after the search's driver
    already marked that run KILLED - so both orders end KILLED)."""
    status = "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"
    try:
        for v in versions:
            client.delete_model_version(v["name"], str(v["version"]))
        set_tags(client, run_id, {"cmidd.error": f"{type(error).__name__}: {error}"[:5000]})
        end_run(client, run_id, status)
    except Exception as e:  # the original error matters more than this one
        log.warning("could not mark run %s %s: %s", run_id, status, e)


# ----------------------------------------------------------------------------------------------------
# Registry: distilled sets


def set_model_name(dataset: str, ipc: int) -> str:
    """``distilled-<dataset>-ipc<k>``."""
    return f"distilled-{dataset}-ipc{int(ipc)}"


def ensure_model(client: MlflowClient, name: str, description: str, tags: dict[str, str]) -> None:
    try:
        client.create_registered_model(name, tags=tags, description=description)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def register_set(client: MlflowClient, run_id: str, job, result: JobResult,
                 created: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Register ``runs:/run_id/synthetic`` as a version of ``distilled-<dataset>-ipc<k>``; move ``champion``.

    The set is a data artifact, not a model: the version's source is the run's verified ``synthetic/``
    folder (no pyfunc wrapper, no second copy of the files).

    Args:
        created: the new version is appended here as soon as it exists (for clean-up on a later failure).

    Returns:
        {"name", "version", "alias"}: alias is ``champion`` if this version holds it.
    """
    synset = result.synset
    name = set_model_name(synset.meta["dataset"], job.ipc)
    ensure_model(client, name, f"Distilled {synset.meta['dataset']} sets, {job.ipc} images per class",
                  {"dataset": str(synset.meta["dataset"]), "ipc": str(job.ipc)})
    accs = {k: f"{v:.6g}" for k, v in result.metrics.items() if k.startswith(("acc/", "acc_std/"))}
    tags = {
        "method": job.method.name, "lambda": str(job.cmi.lam), "proxy_set": proxy_label(job),
        "dataset": str(synset.meta["dataset"]),
        "ipc": str(job.ipc), "im_size": str(synset.meta["im_size"]), "content_sha256": synset.sha256(),
        "code_version": code_version(), **accs,
    }
    mv = client.create_model_version(name, f"runs:/{run_id}/{SYNTHETIC}", run_id=run_id, tags=tags,
                                     description=f"{job.name}: {job.method.name}, lambda={job.cmi.lam}")
    entry = {"name": name, "version": int(mv.version), "alias": None}
    if created is not None:
        created.append(entry)
    champion = move_champion(client, name, also_run=run_id)
    log.info("registered %s version %s (champion: version %s)", name, mv.version, champion)
    entry["alias"] = CHAMPION if champion == entry["version"] else None
    return entry


def move_champion(client: MlflowClient, name: str, metric: str = DEFAULT_METRIC,
                  also_run: str | None = None) -> int | None:
    """Point ``champion`` at the best version by ``metric``; returns its number (None if none qualifies).

    Ties keep the older version. Two jobs registering at once may both move the alias; each re-reads the
    versions after setting it and corrects a stale choice once.
    """
    best = None
    for _ in range(2):
        ranked = _ranked(client, name, metric, also_run)
        if not ranked:
            return None
        best = int(ranked[0][1].version)
        client.set_registered_model_alias(name, CHAMPION, str(best))
        if int(client.get_registered_model(name).aliases.get(CHAMPION, best)) == best:
            break
    return best


def _ranked(client: MlflowClient, name: str, metric: str, also_run: str | None = None):
    """Versions of ``name`` joined with their runs, best first by ``metric`` (registry versions carry no
    metrics of their own). Only versions of FINISHED, active runs count (plus ``also_run``, registering now).

    Returns:
        [(value, ModelVersion, Run)].
    """
    out = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        try:
            run = client.get_run(mv.run_id)
        except MlflowException:
            continue  # run deleted from the store
        ok = run.info.status == "FINISHED" or run.info.run_id == also_run
        if ok and run.info.lifecycle_stage == "active" and metric in run.data.metrics:
            out.append((run.data.metrics[metric], mv, run))
    out.sort(key=lambda t: (-t[0], int(t[1].version)))
    return out


def _require_model(client: MlflowClient, name: str, prefix: str) -> Any:
    try:
        return client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models(f"name LIKE '{prefix}%'"))
        raise UnknownNameError(
            f"no registered model {name!r} in this store; registered: {', '.join(known) or 'none'}"
        ) from None


def _describe(client: MlflowClient, mv, run, aliases: dict[str, int]) -> dict[str, Any]:
    """The JSON object of a version: name, version, run_id, alias, metrics, params, source."""
    held = sorted(a for a, v in aliases.items() if int(v) == int(mv.version))
    return {
        "name": mv.name, "version": int(mv.version), "run_id": mv.run_id,
        "alias": CHAMPION if CHAMPION in held else (held[0] if held else None),
        "metrics": dict(sorted(run.data.metrics.items())), "params": dict(sorted(run.data.params.items())),
        "source": mv.source,
    }


def best_set(dataset: str, ipc: int, metric: str = DEFAULT_METRIC, uri: str | None = None) -> dict[str, Any]:
    """The best registered version of ``distilled-<dataset>-ipc<k>`` by ``metric`` (higher is better).

    Returns:
        {"name", "version", "run_id", "alias", "metrics": {...}, "params": {...}, "source"}.

    Raises:
        UnknownNameError: no such registered model.
        ConfigError: no version's run has ``metric`` (the message lists the metrics they have).

    Example:
        >>> best_set("digits", 10)["params"]["cmi.lam"]
        '10.0'
    """
    with mlflow_errors():
        client = client_for(resolve_uri(uri))
        name = set_model_name(dataset, ipc)
        model = _require_model(client, name, "distilled-")
        ranked = _ranked(client, name, metric)
        if not ranked:
            have = sorted({k for v in client.search_model_versions(f"name = '{name}'")
                           for k in _safe_metrics(client, v.run_id)})
            raise ConfigError(
                f"--metric: no finished version of {name} has {metric!r}; "
                f"its runs have: {', '.join(have) or 'none'}"
            )
        _, mv, run = ranked[0]
        return _describe(client, mv, run, model.aliases)


def _safe_metrics(client: MlflowClient, run_id: str) -> list[str]:
    try:
        return list(client.get_run(run_id).data.metrics)
    except MlflowException:
        return []


def _pick_version(client: MlflowClient, name: str, version: int | None, alias: str | None):
    """The version asked for: a number, an alias, else ``champion``, else the best by the default metric."""
    if version is not None and alias is not None:
        raise ConfigError("--version and --alias: give one, not both")
    _require_model(client, name, "distilled-")
    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        what = f"version {version}" if version is not None else f"alias {alias!r}"
        raise UnknownNameError(f"{name} has no {what}") from None
    with contextlib.suppress(MlflowException):
        return client.get_model_version_by_alias(name, CHAMPION)
    ranked = _ranked(client, name, DEFAULT_METRIC)
    if not ranked:
        raise UnknownNameError(f"{name} has no champion and no finished version to pick")
    return ranked[0][1]


def _download_source(client: MlflowClient, source: str, dst: str) -> Path:
    """Download a version's ``runs:/<run>/<path>`` source with *this* client (``models:/`` URIs would be
    resolved against MLflow's global registry URI, not ours)."""
    run_id, _, path = source.removeprefix("runs:/").lstrip("/").partition("/")
    if not source.startswith("runs:/") or not run_id or not path:
        raise CmiddError(f"version source {source!r} is not runs:/<run>/<path> (what cmidd registers)")
    return Path(client.download_artifacts(run_id, path, dst))


def pull(dataset: str, ipc: int, out: str | Path, version: int | None = None, alias: str | None = None,
         uri: str | None = None) -> Path:
    """Download a registered set into ``out``, verifying every checksum before anything lands there.

    ``out`` must be empty, missing, or hold a previously pulled set (then it is replaced atomically).
    A ``registry.json`` beside the set records where it came from.

    Returns:
        ``out``, loadable with ``SyntheticSet.load(out)``.

    Raises:
        IntegrityError: a file is missing or does not match its sha256 (``out`` is left untouched).
        UnknownNameError: no such model, version or alias.
        ConfigError: ``out`` holds something else; both ``version`` and ``alias`` given.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise ConfigError(f"--out: {out} exists and is not a pulled set; choose an empty or new folder")
    with mlflow_errors():
        client = client_for(resolve_uri(uri))
        name = set_model_name(dataset, ipc)
        mv = _pick_version(client, name, version, alias)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.pull-", dir=out.parent))
        try:
            got = _download_source(client, mv.source, str(tmp))
            _check_pulled(got, mv)
            record = {"name": name, "version": int(mv.version), "run_id": mv.run_id, "source": mv.source,
                      "tracking_uri": resolve_uri(uri), "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (got / "registry.json").write_text(json.dumps(record, indent=2))
            replace_dir(got, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_pulled(folder: Path, mv) -> None:
    label = f"{mv.name} version {mv.version} ({mv.source})"
    synset = load_verified(folder, label)
    want = (mv.tags or {}).get("content_sha256")
    if want and synset.sha256() != want:
        raise IntegrityError(f"{label}: content sha256 differs from the version's tag: refusing to pull")


def load_set(dataset: str, ipc: int, version: int | None = None, alias: str | None = None,
             uri: str | None = None) -> SyntheticSet:
    """A registered set in memory (``champion`` unless ``version`` or ``alias``), checksums verified.

    Example:
        >>> s = load_set("digits", 10, alias="champion")
        >>> s.images.shape
        torch.Size([100, 1, 8, 8])
    """
    with tempfile.TemporaryDirectory(prefix="cmidd-set-") as tmp:
        return SyntheticSet.load(pull(dataset, ipc, Path(tmp) / "set", version, alias, uri))


def list_runs(uri: str | None = None, n: int = 20, experiment: str | None = None) -> list[dict[str, Any]]:
    """The ``n`` most recent runs (of ``experiment``, or of all), newest first, as table rows.

    Returns:
        [{"run_id", "experiment", "name", "kind", "status", "start", "dataset", "ipc", "method", "lambda",
        "acc"}] with acc = acc/cross_arch_mean or None.
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
            "method": r.data.tags.get("method", "-"), "lambda": r.data.tags.get("lambda", "-"),
            "acc": r.data.metrics.get(DEFAULT_METRIC),
        }
        for r in runs
    ]


# ----------------------------------------------------------------------------------------------------
# Registry: proxies


def proxy_model_name(dataset: str, arch: str) -> str:
    """``proxy-<dataset>-<arch>``."""
    return f"proxy-{dataset}-{arch}"


def _proxy_layout(src: Path, dst: Path) -> dict[str, Any]:
    """Lay a saved proxy set out for upload: one sub-folder per proxy with its own one-entry manifest (a
    version's source), and the set's manifest at the top pointing into them (``proxies.load`` reads both)."""
    manifest = json.loads((src / "manifest.json").read_text())
    head = {k: v for k, v in manifest.items() if k != "proxies"}
    entries = []
    for e in manifest["proxies"]:
        stem = Path(e["file"]).stem
        (dst / stem).mkdir(parents=True)
        shutil.copy2(src / e["file"], dst / stem / e["file"])
        (dst / stem / "manifest.json").write_text(json.dumps({**head, "proxies": [e]}, indent=2))
        entries.append({**e, "file": f"{stem}/{e['file']}"})
    set_manifest = {**head, "proxies": entries}
    (dst / "manifest.json").write_text(json.dumps(set_manifest, indent=2))
    return set_manifest


def verify_proxy_folder(folder: Path, label: str | None = None) -> dict[str, Any]:
    """Check that every proxy file in ``folder``'s manifest exists and matches its sha256.

    Raises:
        IntegrityError: naming the first missing or altered file.
    """
    label = label or str(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        raise IntegrityError(f"{label}: no readable manifest.json: not a proxy set") from None
    proxy_zoo.verify_files(folder, manifest, label)
    return manifest


def publish_proxies(client: MlflowClient, run_id: str, job, folder: Path,
                    created: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Upload a pre-trained proxy set, verify it by download, register each proxy as a version of
    ``proxy-<dataset>-<arch>``.

    Returns:
        [{"name", "version", "alias": None}] in the set's order.
    """
    with tempfile.TemporaryDirectory(prefix="cmidd-proxies-") as tmp:
        manifest = _proxy_layout(folder, Path(tmp) / PROXIES)
        client.log_artifacts(run_id, str(Path(tmp) / PROXIES), PROXIES)
    with tempfile.TemporaryDirectory(prefix="cmidd-verify-") as tmp:
        got = Path(client.download_artifacts(run_id, PROXIES, tmp))
        verify_proxy_folder(got, f"runs:/{run_id}/{PROXIES}")
    out = created if created is not None else []
    for e in manifest["proxies"]:
        name = proxy_model_name(manifest["dataset"], e["arch"])
        ensure_model(client, name, f"{e['arch']} proxies pre-trained on {manifest['dataset']}",
                      {"dataset": str(manifest["dataset"]), "arch": e["arch"]})
        tags = {"dataset": manifest["dataset"], "im_size": manifest["im_size"], "set": manifest["set"],
                "arch": e["arch"], "seed": e["seed"], "epochs": e["epochs"],
                "test_acc": f"{e['test_acc']:.6g}",
                "sha256": e["sha256"], "code_version": code_version()}
        source = f"runs:/{run_id}/{PROXIES}/{Path(e['file']).parent}"
        tags = {k: str(v) for k, v in tags.items()}
        mv = client.create_model_version(name, source, run_id=run_id, tags=tags)
        out.append({"name": name, "version": int(mv.version), "alias": None})
    return out


def _proxy_sources(client: MlflowClient, ref: str, dataset: str, im_size: int) -> list[str]:
    """The ``runs:/`` sources a ``proxies.from_registry`` reference means.

    ``ref`` is either a proxy set name (``convnet-x4``: the newest finished run that registered that set
    for this dataset and image size) or comma-separated registered proxies
    (``proxy-digits-ConvNet``, ``.../3`` for a version, ``...@alias``; no suffix = the newest version).
    """
    parts = [p.strip() for p in ref.split(",") if p.strip()]
    if not all(p.startswith("proxy-") for p in parts):
        proxy_zoo.PROXY_SETS.get(ref)  # UnknownNameError lists the set names
        return [_newest_set_source(client, ref, dataset, im_size)]
    return [_proxy_version(client, p).source for p in parts]


def _newest_set_source(client: MlflowClient, set_name: str, dataset: str, im_size: int) -> str:
    flt = f"name LIKE 'proxy-{dataset}-%' AND tags.set = '{set_name}' AND tags.im_size = '{im_size}'"
    runs = {}
    for mv in client.search_model_versions(flt):
        with contextlib.suppress(MlflowException):
            run = client.get_run(mv.run_id)
            if run.info.status == "FINISHED" and run.info.lifecycle_stage == "active":
                runs[run.info.run_id] = run.info.start_time
    if not runs:
        raise UnknownNameError(
            f"proxies.from_registry: no registered proxy set {set_name!r} for {dataset} at {im_size}px; "
            "run a pretrain-proxies job with tracking first"
        )
    return f"runs:/{max(runs, key=runs.get)}/{PROXIES}"


def _proxy_version(client: MlflowClient, ref: str):
    name, version, alias = ref, None, None
    if "@" in ref:
        name, alias = ref.split("@", 1)
    elif "/" in ref:
        name, version = ref.split("/", 1)
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version:
            return client.get_model_version(name, version)
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        raise UnknownNameError(f"proxies.from_registry: no registered proxy {ref!r}") from None
    if not versions:
        raise UnknownNameError(f"proxies.from_registry: {name!r} has no versions")
    return max(versions, key=lambda v: int(v.version))


def fetch_proxies(ref: str, data, dest_root: Path, uri: str | None = None,
                  client: MlflowClient | None = None) -> Path:
    """Download the proxies ``ref`` names (see ``_proxy_sources``) into a verified proxy-set folder.

    The folder is ``dest_root/registry-<hash of the sources>``: the same registry state gives the same
    folder (reused if it verifies), so a resumed job sees an unchanged config.

    Returns:
        The folder, loadable with ``proxies.load(folder, data)``.
    """
    client = client or client_for(resolve_uri(uri))
    sources = _proxy_sources(client, ref, data.name, data.im_size)
    dest = Path(dest_root) / f"registry-{hashlib.sha256(' '.join(sources).encode()).hexdigest()[:12]}"
    with contextlib.suppress(IntegrityError):
        verify_proxy_folder(dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        head, entries = {}, []
        for i, src in enumerate(sources):
            got = _download_source(client, src, str(tmp / f"{i:02d}"))
            manifest = verify_proxy_folder(got, src)
            head = head or {k: v for k, v in manifest.items() if k != "proxies"}
            rel = got.relative_to(tmp)
            entries += [{**e, "file": f"{rel}/{e['file']}"} for e in manifest["proxies"]]
        (tmp / "manifest.json").write_text(json.dumps({**head, "set": ref, "proxies": entries}, indent=2))
        replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_proxies_from_registry(ref: str, data, uri: str | None = None, device="cpu",
                               cache: Path | None = None):
    """Frozen proxy nets from the registry (a proxy set name or registered proxies, see ``fetch_proxies``).

    Example:
        >>> nets = load_proxies_from_registry("convnet-x4", load_dataset("digits"), "sqlite:///mlflow.db")
    """
    with mlflow_errors():
        if cache is not None:
            return proxy_zoo.load(fetch_proxies(ref, data, cache, uri), data, device)
        with tempfile.TemporaryDirectory(prefix="cmidd-proxies-") as tmp:
            return proxy_zoo.load(fetch_proxies(ref, data, Path(tmp), uri), data, device)


def resolve_registry_proxies(job, data, uri: str | None = None, client: MlflowClient | None = None):
    """A distill job whose ``proxies.from_registry`` is replaced by a local verified copy (``proxies.dir``).

    The copy lives beside the job's folder (``<output.dir>/../proxies/registry-<hash>``), shared by jobs
    that resolve to the same proxies. Other jobs are returned unchanged.
    """
    cfg = getattr(job, "proxies", None)
    if job.kind != "distill" or cfg is None or cfg.from_registry is None:
        return job
    folder = fetch_proxies(cfg.from_registry, data, job.output.dir.parent / "proxies", uri, client)
    log.info("proxies.from_registry %r -> %s", cfg.from_registry, folder)
    new = cfg.model_copy(update={"dir": folder, "from_registry": None, "pretrain_if_missing": False})
    return job.model_copy(update={"proxies": new})


# ----------------------------------------------------------------------------------------------------
# MTT expert trajectories

EXPERTS = "experts"


def experts_model_name(dataset: str, net: str) -> str:
    return f"experts-{dataset}-{net}"


def publish_experts(client: MlflowClient, run_id: str, folder: Path,
                    created: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Upload an expert-trajectory folder, verify it by download, register it as one version of
    ``experts-<dataset>-<net>`` (source ``runs:/<run>/experts``)."""
    from .experts import verify_files

    manifest = json.loads((folder / MANIFEST).read_text())
    client.log_artifacts(run_id, str(folder), EXPERTS)
    with tempfile.TemporaryDirectory(prefix="cmidd-verify-") as tmp:
        got = Path(client.download_artifacts(run_id, EXPERTS, tmp))
        verify_files(got, json.loads((got / MANIFEST).read_text()), f"runs:/{run_id}/{EXPERTS}")
    net = manifest["net"]["name"]
    name = experts_model_name(manifest["dataset"], net)
    ensure_model(client, name, f"MTT expert trajectories of {net} on {manifest['dataset']}",
                  {"dataset": str(manifest["dataset"]), "net": net})
    cfg = manifest["experts_cfg"]
    tags = {"dataset": manifest["dataset"], "im_size": manifest["im_size"], "net": net, "num": cfg["num"],
            "epochs": cfg["epochs"], "sha256": ",".join(e["sha256"] for e in manifest["experts"]),
            "code_version": code_version()}
    mv = client.create_model_version(name, f"runs:/{run_id}/{EXPERTS}", run_id=run_id,
                                     tags={k: str(v) for k, v in tags.items()})
    out = created if created is not None else []
    out.append({"name": name, "version": int(mv.version), "alias": None})
    return out


# ----------------------------------------------------------------------------------------------------
# reports (cmidd bench)


def log_report(uri: str, experiment: str, run_name: str, params: dict[str, Any], metrics: dict[str, float],
               folder: Path, files: list[str]) -> str:
    """One finished run holding a report: flat params, scalar metrics, and ``files`` from ``folder`` as
    artifacts. Returns the run id; a failure leaves the run FAILED."""
    client = client_for(uri)
    with mlflow_errors():
        run = client.create_run(ensure_experiment(experiment, client=client), run_name=run_name,
                                tags={"cmidd.kind": "report", "cmidd.code_version": code_version()})
        run_id = run.info.run_id
        try:
            log_params(client, run_id, {k: str(v)[:6000] for k, v in flatten(params).items()})
            log_metrics(client, run_id, metrics_at(0, metrics))
            for name in files:
                client.log_artifact(run_id, str(folder / name))
        except BaseException:
            end_run(client, run_id, "FAILED")
            raise
        end_run(client, run_id, "FINISHED")
    return run_id

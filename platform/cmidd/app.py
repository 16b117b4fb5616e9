"""The app's composition root, the one place that joins the two platform wings (``cmidd.ray``, ``cmidd.tracking``).

``cmidd run``, ``cmidd demo`` and the bench's quality suite call ``execute``: one job, with the two choices that
the layers below leave open:

- the loop: the plain ``distill`` or Ray Train for ``scaling.workers > 1`` (``cmidd.ray.pick_loop``;
  the core ``cmidd.runner`` is handed the loop and never imports Ray), on the Ray cluster at ``address``;
- the record: a ``cmidd.store.Store`` (``open_store``: MLflow's, ``cmidd.tracking.store.MlflowStore``; its
  ``track`` is ``cmidd.tracking.tracked_run``: an MLflow run, its artifacts, the registered set) or none.

The CLI reaches a store only through here: ``open_store`` for its queries (best, pull, runs), ``ensemble`` (the
store fetches the sources, ``execute`` runs the ``ensemble`` job in it), and the functions below for what the MLflow
store still orchestrates itself (``rescore``, ``pareto_best``: ``store.Workflows``).

``cmidd search`` and the bench's search suite call ``run_search``: Ray Tune runs the trials
(``cmidd.ray.tune``), each one a ``SearchTrial`` (a tracked child run of the search's parent run), and the
tracking wing opens the parent and records the end (``search_parent``, ``finish_search``).

mlflow and ray are imported only on the path that needs them, so untracked single-process jobs run
without the platform packages.

Example:
    >>> from cmidd.config import load_job
    >>> done = execute(load_job("jobs/distill_dm_digits_ipc10.yaml"), track=True)
    >>> done.result.metrics["acc/cross_arch_mean"], done.run_id
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .distill import distill
from .errors import CmiddError, ConfigError
from .names import set_of_model
from .ray import pick_loop, run_job
from .scoring import SCORER
from .store import Store, Workflows
from .synthetic import SetDataset, SyntheticSet

if TYPE_CHECKING:
    from .config import EvalCfg, SearchCfg
    from .data import Dataset
    from .distill import Hooks
    from .runner import JobResult

log = logging.getLogger(__name__)


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


def tracking_uri(uri: str | None) -> str:
    """The MLflow store to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` here.

    Raises:
        ConfigError: a URI cmidd cannot use (file stores, in-memory sqlite).
    """
    from .tracking import resolve_uri

    return resolve_uri(uri)


def open_store(uri: str | None = None) -> Store:
    """The store at ``uri``: MLflow's (``tracking_uri`` rules, applied when the store is first used)."""
    from .tracking.store import MlflowStore

    return MlflowStore(uri)


def load_set(name_or_path: str | Path, version: int | None = None, alias: str | None = None,
             uri: str | None = None, store: Store | None = None) -> SetDataset:
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
    store = store if store is not None else open_store(tracking_uri(uri))
    return store.load_set(dataset, int(ipc), version, alias).dataset()


def needs_ray(job) -> bool:
    """True for a distill job with ``scaling.workers > 1`` (run by Ray Train)."""
    return pick_loop(job) is not distill


def execute(job, *, track: bool = False, uri: str | None = None, address: str | None = None,
            resume: bool = False, resume_run_id: str | None = None, hooks: Hooks | None = None,
            data: Dataset | None = None, experiment: str | None = None,
            resume_hint: str | None = None, parent_run_id: str | None = None,
            store: Store | None = None, tags: dict[str, str] | None = None) -> Execution:
    """Run a validated job of any kind with the right loop, in a run of the store when ``track``.

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
        parent_run_id: when tracked, the run this job's run is nested under (the demo's parent run).
        store: the store when tracked (default: ``open_store(uri)``, MLflow's).
        tags: more run tags when tracked (an ensemble's: where its sources were picked from).

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
    store = store if store is not None else open_store(uri)
    done = store.track(job, pick_loop(job), resume_run_id=resume_run_id, resume=resume, hooks=hooks, data=data,
                       experiment=experiment, resume_hint=resume_hint, parent_run_id=parent_run_id, tags=tags)
    return Execution(done.result, done.run_id, done.uri, list(done.versions))


@dataclass(frozen=True)
class SearchTrial:
    """What one search trial runs in its Tune actor (``cmidd.ray.tune.Trial``): its distill job with the loop it
    asks for, tracked as a child run of the search's ``parent`` in the store at ``uri``."""

    uri: str
    search: str
    parent: str

    def __call__(self, job, trial_id: str, tags: dict[str, str], hooks: Hooks) -> tuple[dict[str, float], str]:
        from .tracking import run_trial

        return run_trial(self.uri, self.search, self.parent, job, trial_id, tags, hooks, pick_loop(job))


def run_search(cfg: SearchCfg, uri: str | None = None, address: str | None = None, resume: bool = False,
               progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the search ``cfg``; returns its summary (also logged to the parent run as trials.json).

    Args:
        cfg: a validated search (``config.load_search``).
        uri: the MLflow store (``tracking_uri`` rules).
        address: Ray cluster (``auto``, ``HOST:PORT``); None = ``$RAY_ADDRESS``, else a local Ray.
        resume: continue the search stored in ``cfg.storage_dir``.
        progress: print Tune's live progress table.

    Returns:
        {"parent_run_id", "experiment", "trials": [{"trial_id", "run_id", "state", "step", "metric", "std",
        "params", "lam_effective"}], "best": {...}, "registered": [{"name", "version", "run_id", ...}],
        "stopped": [ids], "wall_s", "optuna_study": {"name", "storage"}}.

    Raises:
        ConfigError: bad storage / resume state / address (before anything is written).
        KeyboardInterrupt: the search was interrupted (Ctrl-C); ``--resume`` continues it.
        CmiddError: MLflow failures; every trial failed.
    """
    from .ray import connect, disconnect
    from .ray.tune import (STUDY_DB, check_storage, check_trial_resources, fit_search, local_resources, save_parent,
                           saved_parent, study_storage, study_summary)
    from .tracking import client_for, credentials_env, finish_search, search_concurrency, search_parent

    uri = tracking_uri(uri)
    check_storage(cfg, resume)  # before the store is touched: a bad storage folder leaves nothing behind
    local = local_resources(address)  # a trial the cluster cannot place (1 GPU, none there) would wait forever:
    if local is not None:  # refused before a local Ray starts (this machine's resources) ...
        check_trial_resources(cfg, local)
    started = connect(address)  # before the store is touched: a bad address leaves nothing behind
    try:
        if local is None:  # ... or, on a running cluster, before the store is touched
            check_trial_resources(cfg)
        client = client_for(uri)
        with search_parent(client, cfg, saved_parent(cfg) if resume else None) as parent:
            if not resume:
                save_parent(cfg, parent.run_id)
            parent.fail_status = "KILLED"  # a search that stops inside Tune can be resumed
            try:
                # the store's credentials reach the trials through Ray's object store (not Tune's files, not Ray's
                # logs: a runtime env's variables are logged), so a node needs none of its own
                trials, wall = fit_search(cfg, SearchTrial(uri, cfg.name, parent.run_id), resume=resume,
                                          progress=progress, max_concurrent=search_concurrency(cfg, uri),
                                          env=credentials_env())
            finally:
                if started:
                    disconnect()  # Ray's resources go back before the driver's MLflow work
                    started = False
            parent.fail_status = None  # Ctrl-C still ends it KILLED; "no trial finished" ends it FAILED
            summary = finish_search(client, cfg, parent.run_id, trials, wall, SCORER, partial(study_summary, cfg))
            tag_search_gains(client, summary["registered"], uri)
            if (cfg.storage_dir / STUDY_DB).is_file():  # the TPE sampler's study: optuna-dashboard <storage>
                summary["optuna_study"] = {"name": cfg.name, "storage": study_storage(cfg)}
    finally:
        if started:
            disconnect()
    return summary


def tag_search_gains(client, registered: list[dict[str, Any]], uri: str) -> None:
    """The gain over random-real (paired draws) on every version of each model and protocol a search registered
    into (tag ``gain_over_random``), once the search's random-real draws are logged."""
    from .tracking import tag_gains

    store = open_store(uri)
    for name, dataset, ipc, pid in _registered_models(registered):
        try:
            tag_gains(client, store.best(dataset, ipc, protocol=pid))
        except CmiddError as e:  # a finished search stays finished: the tag is a convenience of the UI
            log.warning("gain_over_random not tagged on %s: %s", name, e)


def _registered_models(registered: list[dict[str, Any]]) -> list[tuple[str, str, int, str | None]]:
    """(model, dataset, ipc, protocol) of each model and protocol ``registered`` versions went into, in order."""
    out = []
    for name, pid in dict.fromkeys((v["name"], v.get("protocol")) for v in registered):
        out.append((name, *set_of_model(name), pid))
    return out


def search_answers(store: Store, registered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The store's best version (``Store.best``) of each model and protocol a search registered into."""
    return [store.best(dataset, ipc, protocol=pid) for _, dataset, ipc, pid in _registered_models(registered)]


def _workflows(store: Store, what: str) -> Workflows:
    """``store`` as ``Workflows`` (the MLflow store still evaluates sets itself), or ConfigError naming ``what``."""
    if not isinstance(store, Workflows):
        raise ConfigError(f"{what}: the store {store.uri} cannot run it (only the MLflow store evaluates sets)")
    return store


def rescore(store: Store, dataset: str, ipc: int, protocol: str, versions: list[int] | None = None, seed: int = 0,
            device: str = "auto") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``cmidd evaluate``: score registered sets under ``protocol``, register them, then the store's best there.

    Returns:
        (the versions scored now ``[{"from_version", "version", "run_id", "value"}]``, ``Store.best`` under
        ``protocol``).
    """
    done = _workflows(store, "evaluate").rescore(dataset, ipc, protocol, versions, seed, device, SCORER)
    return done, store.best(dataset, ipc, protocol=protocol)


@dataclass
class EnsembleResult:
    """A logged and registered ensemble set: the set, its run, scores and rows, its version, its sources."""

    synset: SyntheticSet
    run_id: str
    metrics: dict[str, float]
    rows: list[dict]
    version: dict[str, Any]  # {"name", "version", "alias"}
    sources: list[str]


def ensemble(store: Store, mode: str, eval_cfg: EvalCfg, seed: int = 0, *, from_search: str | None = None,
             top: int = 3, dataset: str | None = None, ipc: int | None = None,
             versions: list[int] | None = None) -> EnsembleResult:
    """``cmidd ensemble``: one set from a search's ``top`` trials (``from_search``) or from registered ``versions``
    of ``dataset``/``ipc``, fetched and verified by the store, then an ``ensemble`` job (the runner combines and
    evaluates) tracked in that store: a run of kind ``ensemble`` in experiment ``ensemble-<dataset>``, its set
    registered (any failure ends the run FAILED and removes a version it created). Sets that do not combine are
    refused before the run exists."""
    from .config import parse_job

    if not from_search and (len(versions or []) < 2 or len(set(versions)) != len(versions)):
        raise ConfigError(f"--versions: need two or more distinct versions, got {versions}")
    with tempfile.TemporaryDirectory(prefix="cmidd-ens-") as tmp:
        src = (store.search_sets(from_search, top, Path(tmp)) if from_search
               else store.version_sets(dataset, ipc, versions, Path(tmp)))
        meta = SyntheticSet.load(src.folders[0]).meta
        job = parse_job({"kind": "ensemble", "name": f"ensemble-{mode}", "seed": seed,
                         "device": "auto",  # a GPU when there is one
                         "data": {"name": str(meta["dataset"]), "im_size": meta.get("im_size")},
                         "output": {"dir": str(Path(tmp) / "out")}, "sets": [str(f) for f in src.folders],
                         "sources": src.sources, "mode": mode, "eval": eval_cfg.model_dump(mode="json")},
                        "cmidd ensemble")
        done = execute(job, track=True, store=store, experiment=f"ensemble-{meta['dataset']}", tags=src.tags)
    return EnsembleResult(done.result.synset, done.run_id, done.result.metrics, done.result.rows, done.versions[0],
                          list(src.sources))


def pareto_best(store: Store, search: str, limits: dict[str, float]) -> dict[str, Any]:
    """``cmidd best --pareto``: the best set of a multi-objective search's front within ``limits``."""
    return _workflows(store, "--pareto").pareto_best(search, limits)

"""Ray Tune + Optuna: a search space YAML -> TPE trials, ASHA on the eval accuracy, one Tune experiment.

This module runs trials; it records nothing. Each trial calls the ``trial`` it is given (``SearchTrial`` in
``cmidd.app``: the job under ``tracking.tracked_run`` as a child of the search's parent run) with its distill job
(``config.trial_job``), its Tune trial id, tags and the ``TuneHooks`` that report every intermediate
evaluation to Tune (``step`` = distillation iteration: ASHA's time axis), and reports the final metrics with
``final: True``. ``cmidd.app.run_search`` joins this module and the tracking wing's ``search_parent`` /
``finish_search``.

The lambda = 0 arm (``zero_arm: true`` on cmi.lam or cmi.alpha) is a categorical ``cmi_on`` in {True, False}
beside the log-scale lambda (alpha), with ``{"cmi_on": False}`` enqueued as the first point
(``points_to_evaluate``; ``_space.optuna_space``).

The storage folder (``SearchCfg.storage``) holds the Tune experiment (``tune/``; or ``tune_storage``: a folder
every node sees or a pyarrow URI such as ``s3://bucket/path``, the experiment then ``<tune_storage>/<name>``), the
search's fingerprint (``space.json``, checked on ``--resume``) and the id of its MLflow parent run
(``parent_run_id``). ``--resume`` restores the experiment (``Tuner.restore``, unfinished and errored trials
continued). Restoring unpickles Tune's ``tuner.pkl``: a storage folder is trusted input, and ``--resume`` refuses
one without cmidd's ``space.json``.

Example:
    >>> cfg = load_search("search_spaces/digits_dmcmi.yaml")
    >>> tuner = build_tuner(cfg, trial)  # trial(job, trial_id, tags, hooks) -> (metrics, run_id)
    >>> fit_tuner(tuner); read_trials(cfg.storage_dir / TUNE_DIR)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import proxies as proxy_zoo
from ..config import DistillJob, SearchCfg, trial_job
from ..distill import Hooks
from ..errors import ConfigError
from ..files import atomic_write
from ..names import DISTILL_SECONDS, FINAL, IPC, TAG_NODE
from ..runner import load_job_data, proxies_dir
from ._space import STUDY_DB, optuna_searcher, optuna_space, study_storage, study_summary

__all__ = ["PARENT_FILE", "STUDY_DB", "TUNE_DIR", "ProxyBundle", "Trial", "TuneHooks", "build_tuner", "check_storage",
           "experiment_path", "fit_search", "fit_tuner", "make_trainable", "optuna_space", "prepare_proxies",
           "read_trials", "save_parent", "saved_parent", "study_storage", "study_summary"]

log = logging.getLogger(__name__)

TUNE_DIR = "tune"
PARENT_FILE = "parent_run_id"
SPACE_FILE = "space.json"  # the search's fingerprint, checked on --resume

Trial = Callable[[DistillJob, str, dict[str, str], Hooks], tuple[dict[str, float], str]]
"""What a trial runs: ``(job, trial_id, tags, hooks) -> (final metrics, MLflow run id)``; picklable (Tune ships
it to the trial's actor)."""


# ----------------------------------------------------------------------------------------------------
# The trial (runs in a Tune actor)


class TuneHooks(Hooks):
    """Reports each intermediate evaluation to Tune (``step`` = distillation iteration, ASHA's time axis), with the
    costs a multi-objective search may minimize (``names.COSTS``: the IPC, the seconds so far): Tune wants every
    objective in every report."""

    def __init__(self, ipc: int = 0) -> None:
        self.ipc, self.t0 = ipc, time.perf_counter()

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        from ray import tune

        costs = {IPC: float(self.ipc), DISTILL_SECONDS: time.perf_counter() - self.t0}
        tune.report({**costs, **{k: float(v) for k, v in metrics.items()}, "step": int(step)})


ProxyBundle = dict[str, dict[str, bytes]]
"""The proxy sets the driver pre-trained, for the trials: {the set's folder (absolute): ``proxies.pack`` of it}."""


def make_trainable(cfg: SearchCfg, trial: Trial):
    """The Tune function trial: ``trial`` on the trial's distill job, its final metrics reported with ``final``.

    Two things travel to the trial through Ray's object store (``tune.with_parameters``: not in Tune's files,
    not in Ray's logs), so that a trial on another node needs no disk shared with the driver and no secret of its
    own: ``proxies`` (a ``ProxyBundle``), written to the same folders on the trial's node unless a verified copy is
    there, and ``env`` (e.g. the MLflow store's credentials), set in the trial's own process first.
    """

    def trainable(config: dict[str, Any], proxies: ProxyBundle | None = None,
                  env: dict[str, str] | None = None) -> None:
        import ray
        from ray import tune

        os.environ.update(env or {})  # this trial's own worker process (Tune does not reuse actors here)
        for folder, files in (proxies or {}).items():
            proxy_zoo.unpack(files, folder)
        trial_id = tune.get_context().get_trial_id()
        job = trial_job(cfg, config, trial_id)
        tags = {TAG_NODE: ray.get_runtime_context().get_node_id()}
        metrics, run_id = trial(job, trial_id, tags, TuneHooks(job.ipc))
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        tune.report({IPC: float(job.ipc), **scalars, "step": job.method.iterations, FINAL: True,
                     "mlflow_run_id": run_id})

    return trainable


# ----------------------------------------------------------------------------------------------------
# The driver


def _trial_resources(cfg: SearchCfg) -> dict[str, float]:
    """The trial driver's resources: the YAML's, or a tenth of a CPU when Ray Train workers take the rest."""
    custom = dict(cfg.resources.custom)  # Ray custom resources: the nodes a trial may run on
    if cfg.base.scaling.workers > 1 or "scaling.workers" in cfg.params:
        return {"cpu": 0.1, **custom}
    return {"cpu": cfg.resources.cpus, "gpu": cfg.resources.gpus, **custom}


def local_resources(address: str | None) -> dict[str, float] | None:
    """The CPUs and GPUs of the new local Ray that ``connect(address)`` would start (known without starting it:
    this machine's), or None when it would join a running Ray (then ask that cluster)."""
    import ray

    if ray.is_initialized() or address not in (None, "local") or (address is None and os.environ.get("RAY_ADDRESS")):
        return None
    import torch

    return {"CPU": float(len(os.sched_getaffinity(0))), "GPU": float(torch.cuda.device_count())}


def check_trial_resources(cfg: SearchCfg, have: dict[str, float] | None = None) -> None:
    """One trial must fit the Ray cluster (its driver, and its Ray Train workers if any): Tune would otherwise
    wait forever for resources that never come. Called before the search's parent run exists.

    Args:
        cfg: the search.
        have: the cluster's resources (``local_resources``); None = the connected cluster's.

    Raises:
        ConfigError: naming the field (``resources.gpus``, ``resources.cpus``, ``base.scaling...``), what one
            trial asks for and what the cluster has.
    """
    if have is None:
        import ray

        have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    driver = _trial_resources(cfg)
    s = cfg.base.scaling
    workers = s.workers if s.workers > 1 else 0
    needs = {"cpus": (driver.get("cpu", 0.0) + workers * s.cpus_per_worker, cpus),
             "gpus": (driver.get("gpu", 0.0) + (workers if s.use_gpu else 0), gpus)}
    for what, (need, has) in needs.items():
        if need > has + 1e-9:
            field = f"resources.{what}" if not workers else f"base.scaling ({what})"
            raise ConfigError(f"{field}: one trial needs {need:g} {what.upper()[:-1]}s, but the Ray cluster has "
                              f"{has:g}; the search would wait forever: ask for fewer or run on a cluster that "
                              "has them")
    for name, need in cfg.resources.custom.items():  # a custom resource no node has: Tune would wait forever too
        if need > have.get(name, 0.0) + 1e-9:
            raise ConfigError(f"resources.custom.{name}: one trial needs {need:g}, but the Ray cluster has "
                              f"{have.get(name, 0.0):g}; start a node with `ray start --resources` that has it")


def prepare_proxies(cfg: SearchCfg) -> ProxyBundle:
    """Pre-train every proxy set a trial may use, once, in the driver (concurrent trials would race on it).

    Returns:
        The sets' files (``ProxyBundle``), which ``make_trainable`` ships to every trial through Ray's object
        store (empty with CMI off or ``proxies.from_registry``: each trial fetches those from the registry).
    """
    bundle: ProxyBundle = {}
    if not cfg.base.cmi.on and not any(w in cfg.params for w in ("cmi.lam", "cmi.alpha")):
        return bundle
    sets = cfg.params["proxies.set"].choice if "proxies.set" in cfg.params else [cfg.base.proxies.set]
    if cfg.base.proxies.from_registry is not None:
        return bundle  # resolved from the registry inside each trial
    data = None
    for name in sets:
        job = trial_job(cfg, {"proxies.set": name, "cmi.lam": 1.0, "cmi.alpha": 0.0}, "proxies")
        data = data if data is not None else load_job_data(job)
        folder = proxies_dir(job, data)
        if not (folder / "manifest.json").is_file():
            log.info("search: pre-training proxy set %s once for all trials", name)
            proxy_zoo.ensure(job.proxies, data, folder, job.seed, "cpu")
        bundle[str(folder.absolute())] = proxy_zoo.pack(folder)
    return bundle


def experiment_path(cfg: SearchCfg) -> str:
    """Where the search's Tune experiment lives: ``<storage>/tune``, or ``<tune_storage>/<name>`` (a URI too)."""
    storage_path, name = cfg.tune_location
    return f"{storage_path}/{name}"


def _experiment_exists(cfg: SearchCfg) -> bool:
    if cfg.tune_storage is None:
        return (cfg.storage_dir / TUNE_DIR).exists()
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(experiment_path(cfg))
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    except (OSError, ValueError) as e:
        raise ConfigError(f"tune_storage: cannot open {cfg.tune_storage!r}: {e}") from None


def check_storage(cfg: SearchCfg, resume: bool) -> None:
    """A new search needs an unused storage folder; ``--resume`` needs one holding a search."""
    store = cfg.storage_dir
    pfile, tune_dir = store / PARENT_FILE, experiment_path(cfg)
    exists = _experiment_exists(cfg)
    if resume and (not pfile.is_file() or not exists):
        raise ConfigError(f"--resume: no search to resume in {store} (no {PARENT_FILE} or Tune experiment {tune_dir})")
    if not resume and (pfile.exists() or exists):
        field, where = ("tune_storage", tune_dir) if exists and cfg.tune_storage else ("storage", store)
        raise ConfigError(f"{field}: {where} already holds a search; pass --resume to continue it, or set another "
                          f"{field} (or delete this one)")
    saved = store / SPACE_FILE
    if resume and not saved.is_file():  # Tune's restore unpickles tune/tuner.pkl: only a folder cmidd made
        raise ConfigError(f"--resume: {store} has no {SPACE_FILE} (the fingerprint cmidd writes when it creates a "
                          "search's storage): refusing to restore a Tune experiment cmidd did not create")
    if resume and _read_json(saved) != fingerprint(cfg):
        raise ConfigError(f"--resume: the space or its base job differs from the search stored in {store} "
                          f"({saved}); resume with the same file and --set options")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fingerprint(cfg: SearchCfg) -> dict[str, Any]:
    """What a resumed search must share with the original: the base job, the space and the search settings."""
    space = {"base": cfg.base.model_dump(mode="json"), "search": cfg.search.model_dump(mode="json"),
             "params": {k: v.model_dump(mode="json") for k, v in cfg.params.items()}}
    return json.loads(json.dumps(space))


def saved_parent(cfg: SearchCfg) -> str:
    """The parent run id a stored search recorded (``--resume``)."""
    return (cfg.storage_dir / PARENT_FILE).read_text().strip()


def save_parent(cfg: SearchCfg, parent: str) -> None:
    """A new search's storage: its fingerprint and its parent run's id (written last, atomically)."""
    store = cfg.storage_dir
    store.mkdir(parents=True, exist_ok=True)
    atomic_write(store / SPACE_FILE, json.dumps(fingerprint(cfg), indent=1).encode())
    atomic_write(store / PARENT_FILE, parent.encode())


def _trainable(cfg: SearchCfg, trial: Trial, proxies: ProxyBundle | None, env: dict[str, str] | None = None):
    """``make_trainable`` with the proxies and ``env`` in Ray's object store (``tune.with_parameters``) and its
    resources."""
    from ray import tune

    fn = make_trainable(cfg, trial)
    shipped = {k: v for k, v in (("proxies", proxies), ("env", env)) if v}
    if shipped:
        fn = tune.with_parameters(fn, **shipped)
    return tune.with_resources(fn, _trial_resources(cfg))


def build_tuner(cfg: SearchCfg, trial: Trial, *, grid: dict[str, list[Any]] | None = None,
                storage: Path | None = None, progress: bool = False, max_concurrent: int | None = None,
                proxies: ProxyBundle | None = None, env: dict[str, str] | None = None):
    """A new Tune experiment (``<storage>/tune``) of ``trial`` over ``cfg``'s space (``make_trainable``).

    Args:
        cfg: the search (its base job, trial resources, ``search`` settings).
        trial: what each trial runs (``Trial``).
        grid: None = the search: TPE samples ``cfg.params`` (``search.num_samples``) and ASHA stops the weak
            trials; else every point of this grid (e.g. ``{"cmi.lam": [0.0, 1.0, 10.0]}``), each to its end.
        storage: the experiment's parent folder (None = ``cfg.tune_location``: ``<storage>`` or
            ``tune_storage``).
        progress: print Tune's live progress table.
        max_concurrent: trials at a time (None = ``search.max_concurrent_trials``; a sqlite store allows 1:
            ``tracking.search_concurrency``).
        proxies: the pre-trained proxy sets every trial gets (``prepare_proxies``).
        env: environment variables each trial sets in its process (the store's credentials: ``make_trainable``).

    Returns:
        A ``ray.tune.Tuner`` (``fit_tuner`` runs it).
    """
    from ray import tune

    trainable = _trainable(cfg, trial, proxies, env)
    storage_path, name = (str(storage), TUNE_DIR) if storage is not None else cfg.tune_location
    if grid is None:
        space, searcher, scheduler = _search_algs(cfg)
        param_space, samples = None, cfg.search.num_samples
    else:
        space, searcher, scheduler = grid, None, None
        param_space, samples = {k: tune.grid_search(list(v)) for k, v in grid.items()}, 1
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=samples,
            max_concurrent_trials=max_concurrent or cfg.search.max_concurrent_trials,
            time_budget_s=cfg.search.time_budget_s,
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path,
            progress_reporter=_reporter(cfg, space, progress), verbose=1 if progress else 0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _search_algs(cfg: SearchCfg) -> tuple[dict[str, Any], Any, Any]:
    """(the Optuna space, the TPE searcher, the ASHA scheduler or None) of the search ``cfg``."""
    from ray.tune.schedulers import ASHAScheduler

    space, searcher = optuna_searcher(cfg)
    a = cfg.search.asha
    # max_t + 1: ASHA stops a trial whose step reaches max_t, which would kill it before its final evaluation
    scheduler = None if a is None else ASHAScheduler(
        time_attr="step", metric=cfg.search.metric, mode=cfg.search.mode, max_t=cfg.max_t + 1,
        grace_period=a.grace_period, reduction_factor=a.reduction_factor)
    return space, searcher, scheduler


def _reporter(cfg: SearchCfg, space: dict[str, Any], progress: bool):
    """Tune's console table of the searched values, step and metric; None without ``progress``."""
    if not progress:
        return None
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's new output ignores a CLIReporter unless this is 0
    return tune.CLIReporter(parameter_columns=list(space), metric_columns={"step": "step", cfg.search.metric: "acc"},
                            max_report_frequency=10, sort_by_metric=False)


def _restored_tuner(cfg: SearchCfg, trial: Trial, proxies: ProxyBundle | None = None,
                    env: dict[str, str] | None = None):
    """The stored Tune experiment of ``cfg`` (``--resume``), unfinished and errored trials continued."""
    from ray import tune

    trainable = _trainable(cfg, trial, proxies, env)
    path = experiment_path(cfg)
    if not tune.Tuner.can_restore(path):
        raise ConfigError(f"--resume: {path} holds no restorable Tune experiment")
    return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)


def fit_tuner(tuner, progress: bool = False) -> None:
    """``tuner.fit()``; without ``progress`` Tune's own banner goes to stderr, so stdout stays the caller's."""
    with contextlib.nullcontext() if progress else contextlib.redirect_stdout(sys.stderr):
        tuner.fit()


def read_trials(path: Path | str) -> list[dict[str, Any]]:
    """Per Tune trial of the experiment stored in ``path``: id, status, config, last result, whether it
    finished (reported ``final``) or failed.

    Read from the experiment state Tune saved in ``path``: after a Ctrl-C it keeps unfinished trials PENDING,
    where the in-memory result grid of ``Tuner.fit()`` shows them TERMINATED like the trials ASHA stopped.
    """
    from ray.tune import ExperimentAnalysis

    out = []
    for t in ExperimentAnalysis(str(path)).trials:
        last = t.last_result or {}
        out.append({"trial_id": t.trial_id, "status": t.status, "config": dict(t.config), "last": last,
                    "final": bool(last.get(FINAL)), "error": t.status == "ERROR"})
    return out


def fit_search(cfg: SearchCfg, trial: Trial, *, resume: bool = False, progress: bool = False,
               max_concurrent: int | None = None,
               env: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], float]:
    """Pre-train the proxies (shipped to the trials through Ray's object store, with ``env``: variables each trial
    sets first, e.g. the store's credentials), run (or on ``resume`` restore) the search's Tune experiment.

    Returns:
        (``read_trials`` of the experiment, the wall seconds of ``Tuner.fit``).
    """
    proxies = prepare_proxies(cfg)
    tuner = (_restored_tuner(cfg, trial, proxies, env) if resume else
             build_tuner(cfg, trial, max_concurrent=max_concurrent, progress=progress, proxies=proxies, env=env))
    t0 = time.perf_counter()
    fit_tuner(tuner, progress)
    return read_trials(experiment_path(cfg)), time.perf_counter() - t0

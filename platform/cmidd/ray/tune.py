"""Ray Tune + Optuna: a search space YAML -> TPE trials, ASHA on the eval accuracy, MLflow parent/child runs.

One search = one MLflow parent run (experiment = the search's name) and one Tune experiment in
``<storage>/tune``. Each trial is a child run (tags ``mlflow.parentRunId``, ``cmidd.tune_trial_id``,
``cmidd.node_id``) made by the same ``tracked_run`` as ``cmidd run``, with ``register=False``: a trial logs
and verifies its set but does not register it. At the end the driver

* marks the child runs of trials that ASHA stopped (their actor was killed mid-run, so the run would stay
  RUNNING): tag ``cmidd.search.stopped=true``, status KILLED; they are never registered;
* registers the top ``register_top_k`` finished trials (``tracking.register_distilled``; a version that already
  exists for the run is kept, so a resumed search does not duplicate it) and moves ``champion``;
* logs to the parent: the best trial's values as params (``best.<field>``; its lambda as the effective
  ``best.cmi.lam_effective``, never the raw ``cmi.lam`` / ``cmi_on``), ``trials.json``, the Optuna study summary
  (``optuna_study.csv``) and plots.

The lambda = 0 arm (``zero_arm: true`` on cmi.lam or cmi.alpha) is a categorical ``cmi_on`` in {True, False}
beside the log-scale lambda (alpha), with ``{"cmi_on": False}`` enqueued as the first point
(``points_to_evaluate``). Every table, param, tag and plot shows the lambda a trial ran (``cmidd.lam``).

Concurrency and the store: sqlite serializes writers and MLflow's sqlite store fails with "database is
locked" under concurrent trial processes, so with a ``sqlite:`` tracking URI the search runs one trial at a
time (a warning says so). For concurrent trials (and for multi-node clusters, where artifacts must reach a
server) pass ``--tracking-uri http://HOST:PORT`` of an ``mlflow server --artifacts-destination ...``.

Resume: the parent run id lives in ``<storage>/parent_run_id``; ``resume=True`` restores the Tune experiment
(``Tuner.restore``) and reuses the parent. A restarted trial looks up its child run by trial id: a FINISHED
run is reported again without rerunning; an unfinished one is continued in place (``resume_run_id``), so each
trial ends exactly once in MLflow.

Example:
    >>> cfg = load_search("search_spaces/digits_dmcmi.yaml")
    >>> summary = run_search(cfg, "sqlite:///mlflow.db")
    >>> summary["best"]["metric"], summary["registered"]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from .. import proxies as proxy_zoo
from ..config import DistillJob, SearchCfg
from ..distill import Hooks
from ..errors import ConfigError
from ..runner import load_job_data, proxies_dir
from ..files import atomic_write
from ..tracking import client_for, ensure_experiment, mlflow_errors, open_run, resolve_uri, run_tags, tracked_run
from . import connect, disconnect, pick_loop
from ._search_report import finish, plots, study_summary, summary_table, zero_arm_verdict
from ._space import FINAL, TAG_NODE, TAG_SEARCH, TAG_STOPPED, TAG_TRIAL, TUNE_DIR, optuna_space, trial_job

__all__ = [
    "FINAL", "TAG_NODE", "TAG_SEARCH", "TAG_STOPPED", "TAG_TRIAL", "TUNE_DIR", "TuneHooks", "build_tuner",
    "find_trial_run", "fit_tuner", "make_trainable", "optuna_space", "plots", "read_trials", "run_search",
    "study_summary", "summary_table", "trial_job", "zero_arm_verdict",
]

log = logging.getLogger(__name__)

PARENT_FILE = "parent_run_id"
SPACE_FILE = "space.json"  # the search's fingerprint, checked on --resume


# ----------------------------------------------------------------------------------------------------
# The trial (runs in a Tune actor)


class TuneHooks(Hooks):
    """Reports each intermediate evaluation to Tune (``step`` = distillation iteration, ASHA's time axis)."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        from ray import tune

        tune.report({**{k: float(v) for k, v in metrics.items()}, "step": int(step)})


def find_trial_run(client, exp_id: str, parent: str, trial_id: str):
    """The child run of ``parent`` tagged with ``trial_id`` (newest first), or None."""
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`{TAG_TRIAL}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{parent}'",
        order_by=["attributes.start_time DESC"], max_results=5,
    )
    return runs[0] if runs else None


def _final_report(job: DistillJob, metrics: dict[str, float], run_id: str) -> dict[str, Any]:
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    return {**scalars, "step": job.method.iterations, FINAL: True, "mlflow_run_id": run_id}


def make_trainable(cfg: SearchCfg, uri: str, parent: str):
    """The Tune function trial: distill + evaluate under ``tracked_run`` as a child of ``parent``."""

    def trial(config: dict[str, Any]) -> None:
        import ray
        from ray import tune

        trial_id = tune.get_context().get_trial_id()
        job = trial_job(cfg, config, trial_id)
        client = client_for(uri)
        with mlflow_errors():
            exp_id = ensure_experiment(cfg.name, client=client)
            prior = find_trial_run(client, exp_id, parent, trial_id)
        if prior is not None and prior.info.status == "FINISHED":  # done before an interruption: no rerun
            log.info("trial %s already finished as run %s", trial_id, prior.info.run_id)
            tune.report(_final_report(job, prior.data.metrics, prior.info.run_id))
            return
        tags = {TAG_TRIAL: trial_id, TAG_NODE: ray.get_runtime_context().get_node_id(), TAG_SEARCH: cfg.name}
        tracked = tracked_run(
            job, uri, resume_run_id=prior.info.run_id if prior is not None else None, resume=prior is not None,
            hooks=TuneHooks(), experiment=cfg.name, parent_run_id=parent, register=False, tags=tags,
            loop=pick_loop(job),
        )
        tune.report(_final_report(job, tracked.result.metrics, tracked.run_id))

    return trial


# ----------------------------------------------------------------------------------------------------
# The driver


def _effective_concurrency(cfg: SearchCfg, uri: str) -> int:
    n = cfg.search.max_concurrent_trials
    if uri.startswith("sqlite:") and n > 1:
        warnings.warn(f"search.max_concurrent_trials={n} with a sqlite store: running 1 trial at a time (sqlite "
                      "serializes writers); pass --tracking-uri http://HOST:PORT of an mlflow server for more", stacklevel=2)
        return 1
    return n


def _trial_resources(cfg: SearchCfg) -> dict[str, float]:
    """The trial driver's resources: the YAML's, or a tenth of a CPU when Ray Train workers take the rest."""
    if cfg.base.scaling.workers > 1 or "scaling.workers" in cfg.params:
        return {"cpu": 0.1}
    return {"cpu": cfg.resources.cpus, "gpu": cfg.resources.gpus}


def _prepare_proxies(cfg: SearchCfg) -> None:
    """Pre-train every proxy set a trial may use, once, in the driver (concurrent trials would race on it)."""
    if not cfg.base.cmi.on and not any(w in cfg.params for w in ("cmi.lam", "cmi.alpha")):
        return
    sets = cfg.params["proxies.set"].choice if "proxies.set" in cfg.params else [cfg.base.proxies.set]
    if cfg.base.proxies.from_registry is not None:
        return  # resolved from the registry inside each trial
    data = None
    for name in sets:
        job = trial_job(cfg, {"proxies.set": name, "cmi.lam": 1.0, "cmi.alpha": 0.0}, "proxies")
        data = data if data is not None else load_job_data(job)
        folder = proxies_dir(job, data)
        if not (folder / "manifest.json").is_file():
            log.info("search: pre-training proxy set %s once for all trials", name)
            proxy_zoo.ensure(job.proxies, data, folder, job.seed, "cpu")


def _check_storage(cfg: SearchCfg, resume: bool) -> None:
    """A new search needs an unused storage folder; ``--resume`` needs one holding a search."""
    store = cfg.storage_dir
    pfile, tune_dir = store / PARENT_FILE, store / TUNE_DIR
    if resume and (not pfile.is_file() or not tune_dir.is_dir()):
        raise ConfigError(f"--resume: no search to resume in {store} (no {PARENT_FILE} or {TUNE_DIR}/)")
    if not resume and (pfile.exists() or tune_dir.exists()):
        raise ConfigError(f"storage: {store} already holds a search; pass --resume to continue it, or set another "
                          "storage folder (or delete this one)")
    saved = store / SPACE_FILE
    if resume and saved.is_file() and json.loads(saved.read_text()) != _fingerprint(cfg):
        raise ConfigError(f"--resume: the space or its base job differs from the search stored in {store} "
                          f"({saved}); resume with the same file and --set options")


def _fingerprint(cfg: SearchCfg) -> dict[str, Any]:
    """What a resumed search must share with the original: the base job, the space and the search settings."""
    space = {"base": cfg.base.model_dump(mode="json"), "search": cfg.search.model_dump(mode="json"),
             "params": {k: v.model_dump(mode="json") for k, v in cfg.params.items()}}
    return json.loads(json.dumps(space))


def _parent_spec(client, cfg: SearchCfg, resume: bool) -> dict[str, Any]:
    """``open_run``'s arguments for the search's parent run: a new run, or on ``--resume`` the stored one
    (set RUNNING again)."""
    if resume:
        pfile = cfg.storage_dir / PARENT_FILE
        parent = pfile.read_text().strip()
        try:
            client.get_run(parent)
        except Exception:
            raise ConfigError(f"--resume: parent run {parent} (from {pfile}) is not in this tracking store") from None
        client.update_run(parent, status="RUNNING")
        return {"run_id": parent, "tags": {"cmidd.search.resumed": "true"}}
    settings = {f"search.{k}": json.dumps(v) if isinstance(v, (dict, list)) else str(v)
                for k, v in cfg.search.model_dump(mode="json").items()}
    space = {f"space.{k}": json.dumps(v.model_dump(mode="json", by_alias=True, exclude_none=True))
             for k, v in cfg.params.items()}
    return {"experiment": cfg.name, "run_name": cfg.name,
            "tags": run_tags("search", cfg.base.data.name, **{TAG_SEARCH: cfg.name}),
            "params": {**settings, **space, "register_top_k": str(cfg.register_top_k)}}


def _record_parent(client, cfg: SearchCfg, parent: str) -> None:
    """A new parent's artifacts (the space file, ``base_job.json``); its id and fingerprint in the storage."""
    store = cfg.storage_dir
    with tempfile.TemporaryDirectory(prefix="cmidd-search-") as tmp:
        if cfg.source is not None and Path(cfg.source).is_file():
            client.log_artifact(parent, str(cfg.source))
        (Path(tmp) / "base_job.json").write_text(json.dumps(cfg.base.model_dump(mode="json"), indent=2))
        client.log_artifact(parent, str(Path(tmp) / "base_job.json"))
    store.mkdir(parents=True, exist_ok=True)
    (store / SPACE_FILE).write_text(json.dumps(_fingerprint(cfg), indent=1))
    atomic_write(store / PARENT_FILE, parent.encode())


def build_tuner(cfg: SearchCfg, uri: str, parent: str, *, grid: dict[str, list[Any]] | None = None,
                storage: Path | None = None, progress: bool = False):
    """A new Tune experiment (``<storage>/tune``) of ``cfg``'s trial (``make_trainable``) under ``parent``.

    Args:
        cfg: the search (its base job, trial resources, ``search`` settings).
        uri: the MLflow store of the trials' child runs.
        parent: the parent run's id.
        grid: None = the search: TPE samples ``cfg.params`` (``search.num_samples``) and ASHA stops the weak
            trials; else every point of this grid (e.g. ``{"cmi.lam": [0.0, 1.0, 10.0]}``), each to its end.
        storage: the experiment's folder (None = ``cfg.storage_dir``).
        progress: print Tune's live progress table.

    Returns:
        A ``ray.tune.Tuner`` (``fit_tuner`` runs it).
    """
    from ray import tune

    trainable = tune.with_resources(make_trainable(cfg, uri, parent), _trial_resources(cfg))
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
            max_concurrent_trials=_effective_concurrency(cfg, uri), time_budget_s=cfg.search.time_budget_s,
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(storage or cfg.storage_dir),
            progress_reporter=_reporter(cfg, space, progress), verbose=1 if progress else 0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _search_algs(cfg: SearchCfg) -> tuple[dict[str, Any], Any, Any]:
    """(the Optuna space, the TPE searcher, the ASHA scheduler or None) of the search ``cfg``."""
    from optuna.samplers import TPESampler
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    space, points = optuna_space(cfg)
    metric, mode = cfg.search.metric, cfg.search.mode  # on searcher and scheduler: Tune's concurrency limiter
    searcher = OptunaSearch(space=space, points_to_evaluate=points or None,  # does not pass TuneConfig's on
                            sampler=TPESampler(seed=cfg.search.seed), metric=metric, mode=mode)
    a = cfg.search.asha
    # max_t + 1: ASHA stops a trial whose step reaches max_t, which would kill it before its final evaluation
    scheduler = None if a is None else ASHAScheduler(
        time_attr="step", metric=metric, mode=mode, max_t=cfg.max_t + 1, grace_period=a.grace_period,
        reduction_factor=a.reduction_factor)
    return space, searcher, scheduler


def _reporter(cfg: SearchCfg, space: dict[str, Any], progress: bool):
    """Tune's console table of the searched values, step and metric; None without ``progress``."""
    if not progress:
        return None
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's new output ignores a CLIReporter unless this is 0
    return tune.CLIReporter(parameter_columns=list(space), metric_columns={"step": "step", cfg.search.metric: "acc"},
                            max_report_frequency=10, sort_by_metric=False)


def _restored_tuner(cfg: SearchCfg, uri: str, parent: str):
    """The stored Tune experiment of ``cfg`` (``--resume``), unfinished and errored trials continued."""
    from ray import tune

    trainable = tune.with_resources(make_trainable(cfg, uri, parent), _trial_resources(cfg))
    path = str(cfg.storage_dir / TUNE_DIR)
    if not tune.Tuner.can_restore(path):
        raise ConfigError(f"--resume: {path} holds no restorable Tune experiment")
    return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)


def fit_tuner(tuner, progress: bool = False) -> None:
    """``tuner.fit()``; without ``progress`` Tune's own banner goes to stderr, so stdout stays the caller's."""
    with contextlib.nullcontext() if progress else contextlib.redirect_stdout(sys.stderr):
        tuner.fit()


def read_trials(path: Path) -> list[dict[str, Any]]:
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


def _fit(cfg: SearchCfg, uri: str, parent: str, resume: bool, progress: bool) -> tuple[list[dict[str, Any]], float]:
    """Pre-train the proxies, run (or restore) the Tune experiment; returns its trials and the wall time."""
    _prepare_proxies(cfg)
    tuner = _restored_tuner(cfg, uri, parent) if resume else build_tuner(cfg, uri, parent, progress=progress)
    t0 = time.perf_counter()
    fit_tuner(tuner, progress)
    return read_trials(cfg.storage_dir / TUNE_DIR), time.perf_counter() - t0


def run_search(cfg: SearchCfg, uri: str | None = None, address: str | None = None, resume: bool = False,
               progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the search ``cfg``; returns a summary (also logged to the parent run as trials.json).

    Args:
        cfg: a validated search (``config.load_search``).
        uri: MLflow tracking URI (``tracking.resolve_uri`` rules).
        address: Ray cluster (``auto``, ``HOST:PORT``); None = ``$RAY_ADDRESS``, else a local Ray.
        resume: continue the search stored in ``cfg.storage_dir``.
        progress: print Tune's live progress table.

    Returns:
        {"parent_run_id", "experiment", "trials": [{"trial_id", "run_id", "state", "step", "metric",
        "params"}], "best": {...} | None, "registered": [{"name", "version", "run_id"}], "stopped": [ids]}.

    Raises:
        ConfigError: bad storage / resume state / address.
        KeyboardInterrupt: the search was interrupted (Ctrl-C); ``--resume`` continues it.
        CmiddError: MLflow failures; every trial failed.
    """
    uri = resolve_uri(uri)
    _check_storage(cfg, resume)  # before the store is touched: a bad storage folder leaves nothing behind
    client = client_for(uri)
    started = connect(address)  # before the parent run exists: a bad address leaves nothing behind
    try:
        with mlflow_errors():
            spec = _parent_spec(client, cfg, resume)
        with open_run(client, **spec) as parent:
            if not resume:
                with mlflow_errors():
                    _record_parent(client, cfg, parent.run_id)
            parent.fail_status = "KILLED"  # a search that stops inside Tune can be resumed
            try:
                trials, wall = _fit(cfg, uri, parent.run_id, resume, progress)
            finally:
                if started:
                    disconnect()  # Ray's resources go back before the driver's MLflow work
                    started = False
            parent.fail_status = None  # Ctrl-C still ends it KILLED; "no trial finished" ends it FAILED
            with mlflow_errors():
                summary = finish(client, cfg, parent.run_id, trials, wall)
    finally:
        if started:
            disconnect()
    return summary

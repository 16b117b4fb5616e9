"""Ray Tune + Optuna: a search space YAML -> TPE trials, ASHA on the eval accuracy, MLflow parent/child runs.

One search = one MLflow parent run (experiment = the search's name) and one Tune experiment in
``<storage>/tune``. Each trial is a child run (tags ``mlflow.parentRunId``, ``cmidd.tune_trial_id``,
``cmidd.node_id``) made by the same ``tracked_run`` as ``cmidd run``, with ``register=False``: a trial logs
and verifies its set but does not register it. At the end the driver

* marks the child runs of trials that ASHA stopped (their actor was killed mid-run, so the run would stay
  RUNNING): tag ``cmidd.search.stopped=true``, status KILLED; they are never registered;
* registers the top ``register_top_k`` finished trials (``tracking.register_set``; a version that already
  exists for the run is kept, so a resumed search does not duplicate it) and moves ``champion``;
* logs to the parent: the best trial's values as params (``best.<field>``), ``trials.json``, the Optuna study
  summary (``optuna_study.csv``) and plots.

The lambda = 0 arm (``zero_arm: true`` on cmi.lam) is a categorical ``cmi_on`` in {True, False} beside the
log-scale lambda, with ``{"cmi_on": False}`` enqueued as the first point (``points_to_evaluate``).

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
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from . import proxies as proxy_zoo
from .config import ZERO_ARM, DistillJob, SearchCfg, parse_job, set_path, trial_job_raw
from .distill import Hooks
from .errors import CmiddError, ConfigError
from .runner import JobResult, load_job_data, proxies_dir
from .tracking import (
    load_verified, log_params, set_tags, end_run, client_for, code_version, ensure_experiment,
    log_metrics, metrics_at, mlflow_errors, move_champion, register_set, resolve_uri, set_model_name,
    tracked_run,
)

log = logging.getLogger(__name__)

PARENT_FILE = "parent_run_id"
SPACE_FILE = "space.json"  # the search's fingerprint, checked on --resume
TAG_TRIAL, TAG_NODE, TAG_STOPPED, TAG_SEARCH = "cmidd.tune_trial_id", "cmidd.node_id", "cmidd.search.stopped", \
    "cmidd.search"
FINAL = "final"  # key of the trial's last report (after the full evaluation); a trial without it was stopped
TUNE_DIR = "tune"


# ----------------------------------------------------------------------------------------------------
# The space: SearchCfg.params -> Optuna distributions


def optuna_space(cfg: SearchCfg) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Optuna distributions by searched path (plus ``cmi_on`` for the lambda = 0 arm) and the enqueued points."""
    import optuna.distributions as od

    space: dict[str, Any] = {}
    points: list[dict[str, Any]] = []
    for key, spec in cfg.params.items():
        if spec.loguniform is not None:
            space[key] = od.FloatDistribution(*spec.loguniform, log=True)
        elif spec.uniform is not None:
            space[key] = od.FloatDistribution(*spec.uniform)
        elif spec.int_ is not None:
            space[key] = od.IntDistribution(*spec.int_)
        else:
            space[key] = od.CategoricalDistribution(list(spec.choice))
        if spec.zero_arm:
            space[ZERO_ARM] = od.CategoricalDistribution([True, False])
    if ZERO_ARM in space:  # Tune wants every searched value in an enqueued point: the base job's, else a middle one
        points.append({k: False if k == ZERO_ARM else _start_value(cfg, k, d) for k, d in space.items()})
    return space, points


def _start_value(cfg: SearchCfg, key: str, dist) -> Any:
    """The base job's value of ``key`` if ``dist`` holds it, else the distribution's middle (geometric if log)."""
    node: Any = cfg.base_raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is not None and _representable(dist, node) and dist._contains(dist.to_internal_repr(node)):
        return node
    if hasattr(dist, "choices"):
        return dist.choices[0]
    mid = math.sqrt(dist.low * dist.high) if dist.log else (dist.low + dist.high) / 2
    return int(round(mid)) if isinstance(dist.low, int) and not isinstance(dist.low, bool) else mid


def _representable(dist, value: Any) -> bool:
    try:
        dist.to_internal_repr(value)
        return True
    except (ValueError, TypeError):
        return False


def trial_job(cfg: SearchCfg, values: dict[str, Any], trial_id: str) -> DistillJob:
    """The trial's distill job: the base + sampled values, its own output folder ``<storage>/trials/<id>``."""
    raw = trial_job_raw(cfg, values)
    raw = set_path(raw, "output.dir", str(cfg.storage_dir / "trials" / trial_id))
    raw = set_path(raw, "name", f"{cfg.name}-{trial_id}")
    return parse_job(raw, f"{cfg.name}: trial {trial_id}")


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
        )
        tune.report(_final_report(job, tracked.result.metrics, tracked.run_id))

    return trial


# ----------------------------------------------------------------------------------------------------
# The driver


def _effective_concurrency(cfg: SearchCfg, uri: str) -> int:
    n = cfg.search.max_concurrent_trials
    if uri.startswith("sqlite:") and n > 1:
        warnings.warn(f"search.max_concurrent_trials={n} with a sqlite store: running 1 trial at a time (sqlite "
                      "serializes writers); pass --tracking-uri http://HOST:PORT of an mlflow server for more")
        return 1
    return n


def _trial_resources(cfg: SearchCfg) -> dict[str, float]:
    """The trial driver's resources: the YAML's, or a tenth of a CPU when Ray Train workers take the rest."""
    if cfg.base.scaling.workers > 1 or "scaling.workers" in cfg.params:
        return {"cpu": 0.1}
    return {"cpu": cfg.resources.cpus, "gpu": cfg.resources.gpus}


def _prepare_proxies(cfg: SearchCfg) -> None:
    """Pre-train every proxy set a trial may use, once, in the driver (concurrent trials would race on it)."""
    lam = cfg.params.get("cmi.lam")
    if cfg.base.cmi.lam == 0 and lam is None:
        return
    sets = cfg.params["proxies.set"].choice if "proxies.set" in cfg.params else [cfg.base.proxies.set]
    if cfg.base.proxies.from_registry is not None:
        return  # resolved from the registry inside each trial
    data = None
    for name in sets:
        job = trial_job(cfg, {"proxies.set": name, "cmi.lam": 1.0}, "proxies")
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


def _open_parent(client, cfg: SearchCfg, resume: bool) -> str:
    """Create the parent run (or reopen it on resume); its id goes to ``<storage>/parent_run_id``."""
    store = cfg.storage_dir
    pfile = store / PARENT_FILE
    if resume:
        parent = pfile.read_text().strip()
        try:
            client.get_run(parent)
        except Exception:
            raise ConfigError(f"--resume: parent run {parent} (from {pfile}) is not in this tracking store") from None
        client.update_run(parent, status="RUNNING")
        set_tags(client, parent, {"cmidd.search.resumed": "true"})
        return parent
    exp_id = ensure_experiment(cfg.name, client=client)
    tags = {"kind": "search", TAG_SEARCH: cfg.name, "code_version": code_version(), "mlflow.source.name": "cmidd",
            "dataset": cfg.base.data.name}
    parent = client.create_run(exp_id, run_name=cfg.name, tags=tags).info.run_id
    settings = {f"search.{k}": json.dumps(v) if isinstance(v, (dict, list)) else str(v)
                for k, v in cfg.search.model_dump(mode="json").items()}
    space = {f"space.{k}": json.dumps(v.model_dump(mode="json", by_alias=True, exclude_none=True))
             for k, v in cfg.params.items()}
    log_params(client, parent, {**settings, **space, "register_top_k": str(cfg.register_top_k)})
    with tempfile.TemporaryDirectory(prefix="cmidd-search-") as tmp:
        if cfg.source is not None and Path(cfg.source).is_file():
            client.log_artifact(parent, str(cfg.source))
        (Path(tmp) / "base_job.json").write_text(json.dumps(cfg.base.model_dump(mode="json"), indent=2))
        client.log_artifact(parent, str(Path(tmp) / "base_job.json"))
    store.mkdir(parents=True, exist_ok=True)
    (store / SPACE_FILE).write_text(json.dumps(_fingerprint(cfg), indent=1))
    tmpf = pfile.with_suffix(".tmp")
    tmpf.write_text(parent)
    tmpf.replace(pfile)
    return parent


def _tuner(cfg: SearchCfg, uri: str, parent: str, resume: bool, progress: bool):
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    trainable = tune.with_resources(make_trainable(cfg, uri, parent), _trial_resources(cfg))
    path = str(cfg.storage_dir / TUNE_DIR)
    if resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"--resume: {path} holds no restorable Tune experiment")
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    space, points = optuna_space(cfg)
    metric, mode = cfg.search.metric, cfg.search.mode  # on searcher and scheduler: Tune's concurrency limiter
    searcher = OptunaSearch(space=space, points_to_evaluate=points or None,  # does not pass TuneConfig's on
                            sampler=TPESampler(seed=cfg.search.seed), metric=metric, mode=mode)
    a = cfg.search.asha
    # max_t + 1: ASHA stops a trial whose step reaches max_t, which would kill it before its final evaluation
    scheduler = None if a is None else ASHAScheduler(
        time_attr="step", metric=metric, mode=mode, max_t=cfg.max_t + 1, grace_period=a.grace_period,
        reduction_factor=a.reduction_factor)
    reporter = None
    if progress:  # Ray's new console output ignores a CLIReporter (and its columns) unless this is 0
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        reporter = tune.CLIReporter(
            parameter_columns=list(space), metric_columns={"step": "step", cfg.search.metric: "acc"},
            max_report_frequency=10, sort_by_metric=False,
        )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler,
            num_samples=cfg.search.num_samples, max_concurrent_trials=_effective_concurrency(cfg, uri),
            time_budget_s=cfg.search.time_budget_s, reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(cfg.storage_dir), progress_reporter=reporter,
            verbose=1 if progress else 0, failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def _trials_of(path: Path) -> list[dict[str, Any]]:
    """Per Tune trial: id, status, config, last result, whether it finished (reported ``final``).

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
    from .distributed import connect

    uri = resolve_uri(uri)
    client = client_for(uri)
    _check_storage(cfg, resume)
    started = connect(address)  # before the parent run exists: a bad address leaves nothing behind
    try:
        with mlflow_errors():
            parent = _open_parent(client, cfg, resume)
    except BaseException:
        if started:
            import ray

            ray.shutdown()
        raise
    try:
        _prepare_proxies(cfg)
        tuner = _tuner(cfg, uri, parent, resume, progress)
        t0 = time.perf_counter()
        with contextlib.nullcontext() if progress else contextlib.redirect_stdout(sys.stderr):
            tuner.fit()  # without progress, Tune's own banner goes to stderr: stdout stays the caller's
        wall = time.perf_counter() - t0
        trials = _trials_of(cfg.storage_dir / TUNE_DIR)
    except BaseException:
        with mlflow_errors():
            end_run(client, parent, "KILLED")
        raise
    finally:
        if started:
            import ray

            ray.shutdown()
    with mlflow_errors():
        summary = _finish(client, cfg, parent, trials, wall)
    return summary


def _finish(client, cfg: SearchCfg, parent: str, trials: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Mark stopped runs, register the top-k, log the summary to the parent; KeyboardInterrupt if unfinished."""
    exp_id = ensure_experiment(cfg.name, client=client)
    runs = {r.data.tags.get(TAG_TRIAL): r for r in client.search_runs(
        [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=10000)}
    interrupted = [t["trial_id"] for t in trials if t["status"] not in ("TERMINATED", "ERROR")]
    rows, stopped = [], []
    for t in trials:
        run = runs.get(t["trial_id"])
        state = "finished" if t["final"] else "error" if t["error"] else "pending" if t["trial_id"] in interrupted \
            else "stopped"
        if state == "stopped":
            stopped.append(t["trial_id"])
            if run is not None and run.data.tags.get(TAG_STOPPED) != "true":
                set_tags(client, run.info.run_id, {TAG_STOPPED: "true"})
                end_run(client, run.info.run_id, "KILLED")
        rows.append({
            "trial_id": t["trial_id"], "run_id": run.info.run_id if run is not None else None, "state": state,
            "step": t["last"].get("step"), "metric": t["last"].get(cfg.search.metric),
            "params": {k: v for k, v in t["config"].items()},
        })
    known = {t["trial_id"] for t in trials}
    for trial_id, run in runs.items():  # a driver killed hard may leave runs of trials Tune never saved
        if trial_id not in known and run.info.status == "RUNNING" and not interrupted:
            set_tags(client, run.info.run_id, {"cmidd.search.orphaned": "true"})
            end_run(client, run.info.run_id, "KILLED")
    if interrupted:
        end_run(client, parent, "KILLED")
        raise KeyboardInterrupt(f"search interrupted with {len(interrupted)} trial(s) unfinished; rerun with --resume")
    sign = 1 if cfg.search.mode == "max" else -1
    done = sorted((r for r in rows if r["state"] == "finished" and r["run_id"] and r["metric"] is not None),
                  key=lambda r: -sign * r["metric"])
    if not done:
        end_run(client, parent, "FAILED")
        raise CmiddError(f"search {cfg.name}: no trial finished ({len(stopped)} stopped, "
                         f"{sum(r['state'] == 'error' for r in rows)} failed); see the child runs")
    registered = _register_top(client, cfg, done[:cfg.register_top_k])
    best = done[0]
    summary = {"parent_run_id": parent, "experiment": cfg.name, "trials": rows, "best": best,
               "registered": registered, "stopped": stopped, "wall_s": wall}
    _log_parent(client, cfg, parent, summary)
    end_run(client, parent, "FINISHED")
    return summary


def _register_top(client, cfg: SearchCfg, top: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Register the sets of ``top`` (verified download of each run's ``synthetic/``); skip runs already
    registered (a resumed search); move ``champion`` on every model touched."""
    out, names = [], set()
    for row in top:
        job = trial_job(cfg, row["params"], row["trial_id"])
        name = set_model_name(job.data.name, job.ipc)
        have = [mv for mv in client.search_model_versions(f"run_id = '{row['run_id']}'") if mv.name == name]
        if have:
            out.append({"name": name, "version": int(have[0].version), "run_id": row["run_id"]})
            names.add(name)
            continue
        run = client.get_run(row["run_id"])
        with tempfile.TemporaryDirectory(prefix="cmidd-top-") as tmp:
            synset = load_verified(Path(client.download_artifacts(row["run_id"], "synthetic", tmp)),
                                    f"runs:/{row['run_id']}/synthetic")
            result = JobResult("distill", Path(tmp), metrics=dict(run.data.metrics), synset=synset)
            entry = register_set(client, row["run_id"], job, result)
        out.append({"name": name, "version": entry["version"], "run_id": row["run_id"]})
        names.add(name)
    for name in sorted(names):
        move_champion(client, name)  # the registry's rule (acc/cross_arch_mean), whatever the search optimized
    return out


def _log_parent(client, cfg: SearchCfg, parent: str, summary: dict[str, Any]) -> None:
    """The best config as params, counts and the best value as metrics, trials.json, study summary, plots."""
    best = summary["best"]
    params = {f"best.{k}": str(v) for k, v in best["params"].items()}
    params |= {"best.trial_id": best["trial_id"], "best.run_id": best["run_id"]}
    existing = client.get_run(parent).data.params
    log_params(client, parent, {k: v for k, v in params.items() if k not in existing})  # resume: logged once
    rows = summary["trials"]
    counts = {"trials/finished": sum(r["state"] == "finished" for r in rows), "trials/stopped": len(summary["stopped"]),
              "trials/failed": sum(r["state"] == "error" for r in rows), f"best/{cfg.search.metric}": best["metric"],
              "time/search_s": summary["wall_s"]}
    log_metrics(client, parent, metrics_at(0, counts))
    with tempfile.TemporaryDirectory(prefix="cmidd-search-") as tmp:
        folder = Path(tmp)
        (folder / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
        files = ["trials.json"]
        files += study_summary(cfg, rows, folder)
        try:
            files += plots(cfg, rows, folder)
        except Exception as e:  # plots are a convenience: never fail a finished search on them
            log.warning("search plots skipped: %s", e)
        for name in files:
            client.log_artifact(parent, str(folder / name))


def study_summary(cfg: SearchCfg, rows: list[dict[str, Any]], folder: Path) -> list[str]:
    """An Optuna study rebuilt from the finished trials: ``optuna_study.csv`` and parameter importances
    (``optuna_importances.json``, when at least two finished trials differ). Returns the files written."""
    import optuna

    space, _ = optuna_space(cfg)
    study = optuna.create_study(direction="maximize" if cfg.search.mode == "max" else "minimize")
    for r in rows:
        if r["state"] != "finished" or r["metric"] is None:
            continue
        values = {k: v for k, v in r["params"].items() if k in space}
        study.add_trial(optuna.trial.create_trial(
            params=values, distributions={k: space[k] for k in values}, value=float(r["metric"]),
            user_attrs={"tune_trial_id": r["trial_id"]}))
    study.trials_dataframe().to_csv(folder / "optuna_study.csv", index=False)
    files = ["optuna_study.csv"]
    values = {t.value for t in study.trials}
    if len(study.trials) >= 2 and len(values) > 1:
        try:
            imp = optuna.importance.get_param_importances(study)
            (folder / "optuna_importances.json").write_text(json.dumps(imp, indent=2))
            files.append("optuna_importances.json")
            files += _importance_plot(imp, folder)
        except (RuntimeError, ValueError) as e:  # degenerate studies (one distinct value per param ...)
            log.info("optuna importances skipped: %s", e)
    return files


def plots(cfg: SearchCfg, rows: list[dict[str, Any]], folder: Path) -> list[str]:
    """accuracy_vs_lambda.png (log x; lambda = 0 drawn at the left edge) and accuracy_vs_ipc.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["metric"] is not None and r["state"] in ("finished", "stopped")]
    files = []
    lams = [_lam(cfg, r["params"]) for r in done]
    if done:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        pos = [x for x in lams if x > 0]
        floor = min(pos) / 3 if pos else 1.0
        for state, marker in (("finished", "o"), ("stopped", "x")):
            pts = [(lam if lam > 0 else floor, r["metric"]) for lam, r in zip(lams, done) if r["state"] == state]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, label=state)
        ax.set_xscale("log")
        ax.set_xlabel("lambda (lambda = 0 at the left edge)")
        ax.set_ylabel(cfg.search.metric)
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "accuracy_vs_lambda.png", dpi=100)
        plt.close(fig)
        files.append("accuracy_vs_lambda.png")
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ipcs = [r["params"].get("ipc", cfg.base.ipc) for r in done]
        ax.scatter(ipcs, [r["metric"] for r in done])
        ax.set_xlabel("ipc")
        ax.set_ylabel(cfg.search.metric)
        fig.tight_layout()
        fig.savefig(folder / "accuracy_vs_ipc.png", dpi=100)
        plt.close(fig)
        files.append("accuracy_vs_ipc.png")
    return files


def _importance_plot(imp: dict[str, float], folder: Path) -> list[str]:
    """optuna_importances.png: a bar per searched parameter (fANOVA importances from Optuna)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.4 * len(imp)))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance (Optuna)")
    fig.tight_layout()
    fig.savefig(folder / "optuna_importances.png", dpi=100)
    plt.close(fig)
    return ["optuna_importances.png"]


def _lam(cfg: SearchCfg, params: dict[str, Any]) -> float:
    if params.get(ZERO_ARM) is False:
        return 0.0
    lam = params.get("cmi.lam", cfg.base.cmi.lam)
    return float(lam) if lam is not None and not math.isnan(float(lam)) else 0.0


def summary_table(summary: dict[str, Any], metric: str) -> str:
    """The final table: one line per trial (best first), with its state, step, metric and values."""
    rows = sorted(summary["trials"], key=lambda r: (r["metric"] is None, -(r["metric"] or 0.0)))
    keys = sorted({k for r in rows for k in r["params"]})
    head = ["trial", "state", "step", metric, *keys]
    lines = [head]
    for r in rows:
        m = "" if r["metric"] is None else f"{r['metric']:.4f}"
        vals = [_fmt(r["params"].get(k)) for k in keys]
        lines.append([r["trial_id"], r["state"], str(r["step"] if r["step"] is not None else ""), m, *vals])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)

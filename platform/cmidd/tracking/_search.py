"""A search's records in MLflow: one parent run per search, one child run per trial, the end-of-search summary.

``cmidd.app.run_search`` runs the search (``cmidd.ray.tune``) between ``search_parent`` and ``finish_search``;
each trial runs ``run_trial`` in its Tune actor. What the store holds:

* the parent run (experiment = the search's name; tags ``kind=search``, ``cmidd.search``): the search settings
  and space as params, the space file and ``base_job.json``; at the end the best trial's values (``best.<field>``;
  its lambda as the effective ``best.cmi.lam_effective``, never the raw ``cmi.lam`` / ``cmi_on``), counts,
  ``trials.json``, the Optuna study summary and plots;
* a child run per trial (tags ``mlflow.parentRunId``, ``cmidd.tune_trial_id``, ``cmidd.node_id``), made by the
  same ``tracked_run`` as ``cmidd run`` with ``register=False``. A restarted trial finds its run by trial id: a
  FINISHED run is reported again without rerunning; an unfinished one is continued in place, so each trial ends
  exactly once in MLflow;
* trials that ASHA stopped (their actor was killed mid-run) end KILLED with tag ``cmidd.search.stopped=true``
  and are never registered; the top ``register_top_k`` finished trials are registered under the search's
  registration protocol (``_search_register``).

sqlite serializes writers and MLflow's sqlite store fails with "database is locked" under concurrent trial
processes, so a ``sqlite:`` store runs one trial at a time (``search_concurrency`` warns); concurrent trials and
multi-node clusters need an ``mlflow server`` (``--tracking-uri http://HOST:PORT``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import SearchCfg
from ..errors import CmiddError, ConfigError
from ..lam import LAM_KEY, fmt_lam
from ..names import TAG_SEARCH, TAG_STOPPED, TAG_TRIAL
from ..pareto import best_within, within
from ..store import Scorer
from ..search_report import RAW_LAMBDA, arch_rows, objective_values, pareto_plot, pareto_rows, plots, row_lam, trial_lam
from ._client import (
    RunSession, client_for, end_run, ensure_experiment, log_metrics, log_params, metrics_at, mlflow_errors, open_run,
    resolve_uri, set_tags,
)
from ._run import tracked_run
from ._search_register import register_top
from ._tags import run_tags

log = logging.getLogger(__name__)

PARETO_FILE = "pareto.json"  # a multi-objective search's front, on its parent run
StudyFiles = Callable[[list[dict[str, Any]], Path], list[str]]  # (rows, folder) -> the files it wrote there


def search_concurrency(cfg: SearchCfg, uri: str) -> int:
    """Trials at a time this store allows: ``search.max_concurrent_trials``, or 1 on sqlite (with a warning)."""
    n = cfg.search.max_concurrent_trials
    if uri.startswith("sqlite:") and n > 1:
        warnings.warn(f"search.max_concurrent_trials={n} with a sqlite store: running 1 trial at a time (sqlite "
                      "serializes writers); pass --tracking-uri http://HOST:PORT of an mlflow server for more",
                      stacklevel=2)
        return 1
    return n


def _children(client, exp_id: str, parent: str, trial_id: str | None = None, max_results: int = 10000) -> list:
    """The child runs of ``parent`` (of one trial when ``trial_id``), newest first."""
    where = f"tags.`mlflow.parentRunId` = '{parent}'"
    if trial_id is not None:
        where = f"tags.`{TAG_TRIAL}` = '{trial_id}' and {where}"
    return client.search_runs([exp_id], filter_string=where, order_by=["attributes.start_time DESC"],
                              max_results=max_results)


def find_trial_run(client, exp_id: str, parent: str, trial_id: str):
    """The child run of ``parent`` tagged with ``trial_id`` (the newest), or None."""
    runs = _children(client, exp_id, parent, trial_id, max_results=5)
    return runs[0] if runs else None


def run_trial(uri: str, search: str, parent: str, job, trial_id: str, tags: dict[str, str], hooks, loop
              ) -> tuple[dict[str, float], str]:
    """One trial as a child run of ``parent``: continued if it has an unfinished run, reported again without
    rerunning if it has a finished one. Returns (its final metrics, its run id)."""
    client = client_for(uri)
    with mlflow_errors():
        exp_id = ensure_experiment(search, client=client)
        prior = find_trial_run(client, exp_id, parent, trial_id)
    if prior is not None and prior.info.status == "FINISHED":  # done before an interruption: no rerun
        log.info("trial %s already finished as run %s", trial_id, prior.info.run_id)
        return dict(prior.data.metrics), prior.info.run_id
    tracked = tracked_run(
        job, uri, resume_run_id=prior.info.run_id if prior is not None else None, resume=prior is not None,
        hooks=hooks, experiment=search, parent_run_id=parent, register=False, loop=loop,
        tags={**tags, TAG_TRIAL: trial_id, TAG_SEARCH: search},
    )
    return dict(tracked.result.metrics), tracked.run_id


@contextlib.contextmanager
def search_parent(client, cfg: SearchCfg, resume_id: str | None = None) -> Iterator[RunSession]:
    """The search's parent run (``open_run``'s lifecycle): a new one with the space and base job recorded, or on
    ``--resume`` the stored ``resume_id``, set RUNNING again.

    Raises:
        ConfigError: ``resume_id`` is not in this store.
    """
    if resume_id is not None:
        with mlflow_errors():
            try:
                client.get_run(resume_id)
            except Exception:
                raise ConfigError(f"--resume: parent run {resume_id} (from {cfg.storage_dir}) is not in this "
                                  "tracking store") from None
            client.update_run(resume_id, status="RUNNING")
        with open_run(client, run_id=resume_id, tags={"cmidd.search.resumed": "true"}) as parent:
            yield parent
        return
    settings = {f"search.{k}": json.dumps(v) if isinstance(v, (dict, list)) else str(v)
                for k, v in cfg.search.model_dump(mode="json").items()}
    space = {f"space.{k}": json.dumps(v.model_dump(mode="json", by_alias=True, exclude_none=True))
             for k, v in cfg.params.items()}
    with open_run(client, cfg.name, cfg.name, run_tags("search", cfg.base.data.name, **{TAG_SEARCH: cfg.name}),
                  {**settings, **space, "register_top_k": str(cfg.register_top_k)}) as parent:
        with mlflow_errors(), tempfile.TemporaryDirectory(prefix="cmidd-search-") as tmp:
            if cfg.source is not None and Path(cfg.source).is_file():
                client.log_artifact(parent.run_id, str(cfg.source))
            (Path(tmp) / "base_job.json").write_text(json.dumps(cfg.base.model_dump(mode="json"), indent=2))
            client.log_artifact(parent.run_id, str(Path(tmp) / "base_job.json"))
        yield parent


def finish_search(client, cfg: SearchCfg, parent: str, trials: list[dict[str, Any]], wall: float,
                  scorer: Scorer, study_files: StudyFiles | None = None) -> dict[str, Any]:
    """Mark stopped runs, register the top-k, log the summary to the parent (which the caller then ends).

    Args:
        scorer: the jobs that score a registered trial under the registration protocol and the random-real draws
            (``cmidd.scoring.SCORER``: the app hands it over; this wing evaluates nothing itself).
        trials: the Tune trials (``cmidd.ray.tune.read_trials``).
        wall: the search's wall seconds.
        study_files: writes the search library's own summary files (the Optuna study) into a folder.

    Returns:
        {"parent_run_id", "experiment", "trials": [rows: trial_id, run_id, state, step, metric, std, params,
        lam_effective], "best", "registered", "stopped", "wall_s"}.

    Raises:
        KeyboardInterrupt: some trials are unfinished (the search was interrupted).
        CmiddError: no trial finished.
    """
    with mlflow_errors():
        exp_id = ensure_experiment(cfg.name, client=client)
        runs = {r.data.tags.get(TAG_TRIAL): r for r in _children(client, exp_id, parent)[::-1]}  # newest wins
        interrupted = [t["trial_id"] for t in trials if t["status"] not in ("TERMINATED", "ERROR")]
        rows, stopped = [], []
        for t in trials:
            run = runs.get(t["trial_id"])
            state = "finished" if t["final"] else "error" if t["error"] else "pending" \
                if t["trial_id"] in interrupted else "stopped"
            if state == "stopped":
                stopped.append(t["trial_id"])
                if run is not None and run.data.tags.get(TAG_STOPPED) != "true":
                    set_tags(client, run.info.run_id, {TAG_STOPPED: "true"})
                    end_run(client, run.info.run_id, "KILLED")
            rows.append({
                "trial_id": t["trial_id"], "run_id": run.info.run_id if run is not None else None, "state": state,
                "step": t["last"].get("step"), "metric": t["last"].get(cfg.search.metric),
                "std": t["last"].get(cfg.search.metric.replace("acc/", "acc_std/", 1)),  # seed spread, if reported
                "params": dict(t["config"]),
                "lam_effective": trial_lam(cfg, t["config"], t["last"]),  # what it ran (0 for the zero arm)
            })
            if cfg.search.multi:  # every objective's value and seed spread (search.objectives)
                rows[-1]["objectives"], rows[-1]["objective_std"] = objective_values(cfg, t["last"])
        known = {t["trial_id"] for t in trials}
        for trial_id, run in runs.items():  # a driver killed hard may leave runs of trials Tune never saved
            if trial_id not in known and run.info.status == "RUNNING" and not interrupted:
                set_tags(client, run.info.run_id, {"cmidd.search.orphaned": "true"})
                end_run(client, run.info.run_id, "KILLED")
        if interrupted:
            raise KeyboardInterrupt(f"search interrupted with {len(interrupted)} trial(s) unfinished; "
                                    "rerun with --resume")
        sign = 1 if cfg.search.mode == "max" else -1
        done = sorted((r for r in rows if r["state"] == "finished" and r["run_id"] and r["metric"] is not None),
                      key=lambda r: -sign * r["metric"])
        if not done:
            raise CmiddError(f"search {cfg.name}: no trial finished ({len(stopped)} stopped, "
                             f"{sum(r['state'] == 'error' for r in rows)} failed); see the child runs")
        front = pareto_rows(cfg, rows) if cfg.search.multi else []
        top = done[:cfg.register_top_k]  # and every front trial, so that each `best --pareto` answer can be pulled
        top += [r for r in front if r["run_id"] and all(r is not t for t in top)]
        registered = register_top(client, cfg, top, parent, scorer)
        summary = {"parent_run_id": parent, "experiment": cfg.name, "trials": rows, "best": done[0],
                   "registered": registered, "stopped": stopped, "wall_s": wall}
        if cfg.search.multi:
            summary["pareto"] = [r["trial_id"] for r in front]
            version = {e["run_id"]: {"name": e["name"], "version": e["version"]} for e in registered}
            for r in front:  # the registered version of each front trial (pareto.json, cmidd best --pareto)
                r["registered"] = version.get(r["run_id"])
        _log_parent(client, cfg, parent, summary, study_files, front)
    return summary


def _log_parent(client, cfg: SearchCfg, parent: str, summary: dict[str, Any], study_files: StudyFiles | None,
                front: list[dict[str, Any]]) -> None:
    """The best config as params, counts and the best value as metrics, trials.json, study summary, plots."""
    best = summary["best"]
    params = {f"best.{k}": str(v) for k, v in best["params"].items() if k not in RAW_LAMBDA}
    params |= {"best.trial_id": best["trial_id"], "best.run_id": best["run_id"],
               f"best.{LAM_KEY}": repr(row_lam(cfg, best))}  # the lambda it ran, never a zero arm's sampled one
    existing = client.get_run(parent).data.params
    log_params(client, parent, {k: v for k, v in params.items() if k not in existing})  # resume: logged once
    rows = summary["trials"]
    counts = {"trials/finished": sum(r["state"] == "finished" for r in rows), "trials/stopped": len(summary["stopped"]),
              "trials/failed": sum(r["state"] == "error" for r in rows), f"best/{cfg.search.metric}": best["metric"],
              "time/search_s": summary["wall_s"]}
    if "pareto" in summary:
        counts["pareto/size"] = len(summary["pareto"])
    log_metrics(client, parent, metrics_at(0, counts))
    with tempfile.TemporaryDirectory(prefix="cmidd-search-") as tmp:
        folder = Path(tmp)
        (folder / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
        files = ["trials.json"]
        if "pareto" in summary:  # the front's rows and the objectives (cmidd best --pareto reads them)
            doc = {"objectives": [o.model_dump() for o in cfg.search.targets], "front": front}
            (folder / PARETO_FILE).write_text(json.dumps(doc, indent=2, default=str))
            files.append(PARETO_FILE)
        if study_files is not None:
            files += study_files(rows, folder)
        try:
            files += plots(cfg, rows, folder)
            files += comparison(client, cfg, summary, folder)
            if "pareto" in summary:
                files += pareto_plot(cfg, rows, front, folder)
        except Exception as e:  # plots are a convenience: never fail a finished search on them
            log.warning("search plots skipped: %s", e)
        for name in files:
            client.log_artifact(parent, str(folder / name))


def comparison(client, cfg: SearchCfg, summary: dict[str, Any], folder: Path, top: int = 5) -> list[str]:
    """comparison.png: the ``top`` best finished trials x their evaluation architectures (mean +- seed std), with
    the newest random-real baseline logged in the search's experiment (if any), hatched."""
    from ..curves import draw_comparison

    table: list[dict[str, Any]] = []
    done = sorted((r for r in summary["trials"] if r["state"] == "finished" and r["run_id"] and r["metric"] is not None),
                  key=lambda r: -(1 if cfg.search.mode == "max" else -1) * r["metric"])[:top]
    for r in done:
        m = client.get_run(r["run_id"]).data.metrics
        label = f"trial {r['trial_id'][-5:]} (lambda {fmt_lam(row_lam(cfg, r))})"
        table += arch_rows(label, m)
    exp_id = ensure_experiment(cfg.name, client=client)
    base = client.search_runs([exp_id], filter_string="tags.kind = 'baseline'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    if base:
        table = arch_rows("random-real", base[0].data.metrics) + table
    if not table:
        return []
    draw_comparison(table, folder / "comparison.png", f"{cfg.name}: the {len(done)} best trials vs random-real")
    return ["comparison.png"]


def pareto_best(search: str, limits: dict[str, float], uri: str | None = None) -> dict[str, Any]:
    """``cmidd best --pareto``: the best set of a multi-objective search under a budget, from its front.

    Args:
        search: the search's name (its MLflow experiment); its newest finished parent run answers.
        limits: objective metric -> budget (``{"ipc": 10}``: at most 10 images per class; a ``max`` objective's
            value must reach it instead). Each must be one of the search's objectives.

    Returns:
        The front row within the budget best on the first objective (``trial_id``, ``run_id``, ``objectives``,
        ``objective_std``, ``params``, ``lam_effective``) plus ``objectives_spec``, ``front_size``, ``within``
        (front trials within the budget) and ``parent_run_id``.

    Raises:
        ConfigError: no such search, a search without objectives, a limit on a metric it did not optimize, or no
            front trial within the budget.
    """
    client = client_for(resolve_uri(uri))
    with mlflow_errors():
        exp = client.get_experiment_by_name(search)
        runs = [] if exp is None else client.search_runs(
            [exp.experiment_id], filter_string="tags.kind = 'search' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise ConfigError(f"--pareto: no finished search named {search!r} in this tracking store")
        parent = runs[0].info.run_id
        names = {a.path for a in client.list_artifacts(parent)}
        if PARETO_FILE not in names:
            raise ConfigError(f"--pareto: search {search!r} has one objective (no search.objectives), so no front")
        with tempfile.TemporaryDirectory(prefix="cmidd-pareto-") as tmp:
            doc = json.loads(Path(client.download_artifacts(parent, PARETO_FILE, tmp)).read_text())
    spec, front = doc["objectives"], doc["front"]
    index = {o["metric"]: i for i, o in enumerate(spec)}
    for metric in limits:
        if metric not in index:
            raise ConfigError(f"--pareto: search {search!r} did not optimize {metric} (its objectives: "
                              f"{', '.join(index)}), so its front cannot answer a budget on it")
    points = [[r["objectives"][o["metric"]] for o in spec] for r in front]
    modes = [o["mode"] for o in spec]
    by_index = {index[m]: v for m, v in limits.items()}
    i = best_within(points, modes, by_index)
    if i is None:
        budget = ", ".join(f"{m} {'<=' if modes[index[m]] == 'min' else '>='} {v:g}" for m, v in limits.items())
        raise ConfigError(f"--pareto: no trial on the front of {search!r} within {budget} (the front: "
                          + "; ".join(", ".join(f"{m} {p:g}" for m, p in zip(index, pt)) for pt in points) + ")")
    return {**front[i], "objectives_spec": spec, "front_size": len(front),
            "within": sum(within(p, modes, by_index) for p in points),
            "parent_run_id": parent}

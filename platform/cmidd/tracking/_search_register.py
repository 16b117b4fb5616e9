"""A search's registration: the top-k scored under the protocol the search declares, then registered.

Search-time scores are cheap proxies (few epochs, one seed, maybe another protocol than the one sets are
compared under). A search declares its registration protocol (``SearchCfg.register_eval``, default the base
job's ``eval`` block). For each of the top-k finished trials:

* its set is downloaded from the trial's run and verified (``runs:/<trial run>/synthetic``);
* if the trial's run was scored under the registration protocol (tag ``protocol.id``), it is registered from
  that run;
* else it is scored under the registration protocol by the app's ``Scorer`` (an ``evaluate`` job of the runner),
  and the scores are recorded in a new run (kind ``evaluate``, in the search's
  experiment, tags ``protocol.*``, ``cmidd.evaluates=<source>`` and ``cmidd.search.parent=<parent run>``; not
  an MLflow child: the parent's children are its trials), and registered from that run, with a copy of the
  trial's verified files logged in that run as source (an MLflow server accepts a ``runs:/`` source only inside
  the run the version names);
* a version that already exists for that set (content sha256) and protocol is kept (a resumed search does not
  duplicate).

In a multi-objective search the caller passes the Pareto front's trials beside the top-k, so every answer of
``cmidd best --pareto`` is a registered version. Then the champions move (``move_champion``: per protocol) and,
when no random-real baseline exists under the registration protocol for a registered IPC, the ``Scorer``'s
``baseline`` job scores the draws and each is logged (kind ``baseline``), so that
``cmidd best`` can state the gain over it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from ..config import trial_job
from ..device import resolve_device
from ..lam import LAM_KEY
from ..names import TAG_SEARCH, TAG_SEARCH_PARENT
from ..protocol import TAG_ID, Protocol
from ..runner import JobResult, load_job_data
from ..store import Scorer
from ._baselines import log_random_real_draws
from ._client import DEFAULT_METRIC, SYNTHETIC, log_metrics, metrics_at, mlflow_errors, open_run, set_tags
from ._ranking import baseline_table, move_champion, version_protocol
from ._rescore import TAG_EVALUATES
from ._sets import load_verified, register_distilled, set_model_name, upload_set
from ._tags import distill_tags, job_params, run_tags

log = logging.getLogger(__name__)


def register_top(client, cfg, top: list[dict[str, Any]], parent: str, scorer: Scorer) -> list[dict[str, Any]]:
    """Register the sets of ``top`` (rows of ``finish``: trial_id, run_id, params) under the search's
    registration protocol, scoring those not scored under it (and the random-real draws) by ``scorer``'s jobs;
    returns [{"name", "version", "run_id", "source", "protocol", "rescored"}]."""
    out, names, need_baseline = [], set(), {}
    data_cache: dict[str, Any] = {}
    for row in top:
        job = trial_job(cfg, row["params"], row["trial_id"])
        name = set_model_name(job.data.name, job.ipc)
        source = f"runs:/{row['run_id']}/{SYNTHETIC}"
        with tempfile.TemporaryDirectory(prefix="cmidd-top-") as tmp:
            folder = Path(client.download_artifacts(row["run_id"], SYNTHETIC, tmp))
            synset = load_verified(folder, source)
            protocol = Protocol.of(cfg.registration_eval, _data(job, data_cache))  # names the data by its digest
            entry = {"name": name, "run_id": row["run_id"], "source": source, "protocol": protocol.id,
                     "rescored": False}
            have = [mv for mv in client.search_model_versions(f"name = '{name}'")  # by content: a re-scored
                    if mv.tags.get("content_sha256") == synset.sha256()  # version's source is its scoring run's
                    and version_protocol(mv) == protocol.id]  # own copy
            trial_run = client.get_run(row["run_id"])
            if have:
                entry["version"] = int(have[0].version)
            elif trial_run.data.tags.get(TAG_ID) == protocol.id:
                result = JobResult("distill", Path("."), metrics=dict(trial_run.data.metrics), synset=synset)
                entry["version"] = register_distilled(client, row["run_id"], job, result, source=source)["version"]
            else:
                scored = scorer.set(folder, _data(job, data_cache), cfg.registration_eval, job.seed, job.device,
                                    Path(tmp) / "job", name=f"{job.name}-rescore")
                entry["version"], entry["scored_by"] = _record_rescore(client, cfg, parent, job, synset, protocol,
                                                                       scored.metrics, source)
                entry["rescored"] = True
        out.append(entry)
        names.add(name)
        need_baseline.setdefault((job.ipc, protocol.id, job.seed), (job, protocol))
    for name in sorted(names):
        move_champion(client, name)  # per protocol: a search protocol never takes another protocol's champion
    for _, protocol in list(need_baseline.values())[:1]:  # the parent says which protocol it registered under
        set_tags(client, parent, {"register.protocol.id": protocol.id, "register.protocol.summary": protocol.summary})
    for (ipc, _, seed), (job, protocol) in need_baseline.items():  # the draws paired with the sets, if missing
        have = set(baseline_table(client, job.data.name, ipc, protocol.id, DEFAULT_METRIC).get(seed, {}))
        _log_random_real(scorer, client, cfg, parent, job, protocol, _data(job, data_cache), have)
    return out


def _data(job, cache: dict[str, Any]):
    """The job's data set, loaded once per ``data`` block."""
    key = job.data.model_dump_json()
    if key not in cache:
        cache[key] = load_job_data(job)
    return cache[key]


def _record_rescore(client, cfg, parent: str, job, synset, protocol: Protocol, scores: dict[str, float],
                    source: str) -> tuple[int, str]:
    """Log the registration protocol's ``scores`` of ``synset`` (an ``evaluate`` job's) in a run linked to
    ``parent``, then register the set from that run (its metrics rank the version; it holds a copy of the files,
    ``source`` is tagged ``cmidd.evaluates``). Returns (version, the run's id)."""
    scored = job.model_copy(update={"eval": cfg.registration_eval})  # the params say the protocol of the metrics
    used = {LAM_KEY: float(synset.meta.get("lam", 0.0))}  # the effective lambda the trial's loop used
    tags = run_tags("evaluate", job.data.name, ipc=str(job.ipc), **distill_tags(job, used), **protocol.tags(),
                    **{TAG_SEARCH_PARENT: parent, TAG_EVALUATES: source, TAG_SEARCH: cfg.name})
    log.info("search: %s re-evaluated under protocol %s (%s)", source, protocol.id, protocol.summary)
    with open_run(client, cfg.name, f"{job.name}-rescore-{protocol.id}", tags, job_params(scored)) as run:
        metrics = {**scores, **used}
        with mlflow_errors():
            log_metrics(client, run.run_id, metrics_at(0, metrics))
            result = JobResult("distill", Path("."), metrics=metrics, synset=synset)
            upload_set(client, run.run_id, synset)  # a server accepts a source only inside the version's run
            entry = register_distilled(client, run.run_id, job, result, run.versions)
    return entry["version"], run.run_id


def _log_random_real(scorer: Scorer, client, cfg, parent: str, job, protocol: Protocol, data, have: set[int]) -> list[str]:
    """Evaluate the random-real draws paired with the job's sets (its evaluation seed, its own initialization
    draw first: ``cmidd.gain.draw_seeds``) under the registration protocol, those not in ``have``; log each as a
    run linked to ``parent`` (kind ``baseline``)."""
    real = job.method.init == "real" and job.method.factor == 1
    return log_random_real_draws(scorer, data, job.ipc, protocol, cfg.registration_eval, job.seed, cfg.name,
                                 own_draw=job.seed if real else None, device=resolve_device(job.device), skip=have,
                                 client=client, extra_tags={TAG_SEARCH: cfg.name, TAG_SEARCH_PARENT: parent})

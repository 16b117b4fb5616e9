"""The tracked job: a validated job run inside one MLflow run, its artifacts verified, then published.

What a job leaves in MLflow::

    experiment   the job's name (or the search's), created by the driver before any worker logs
    params       the flattened config (``cmidd.config.flatten``)
    params       + cmi.lam_effective (the lambda the loop used: cmi.lam, or alpha's calibrated one), at the end
    tags         kind, dataset, ipc, method, lambda (effective, 3 significant digits), cmi.alpha, proxy_set,
                 code_version (cmidd version + git sha); protocol.id, protocol.summary, protocol.json for jobs that
                 score sets (``cmidd.protocol``)
    metrics      loss_dd, cmi, loss_total per iteration (step = iteration); acc/<arch>, acc_std/<arch>,
                 acc/cross_arch_mean, acc/ensemble, ece/ensemble (+ cmi.lam_effective with CMI on) at eval steps
                 and at the end; cmi.lam_effective, cmi_final, cmi_random_real, cmi_ratio at the end
    artifacts    synthetic/, result.json, history.json; checkpoints/{0,1}/ (two slots written in turn, the
                 run tag ``cmidd.checkpoint.slot`` names the last complete one); proxies/ or experts/

Publishing goes by job kind through ``PUBLISHERS``; registration comes last, after the uploaded files were
downloaded again and checked, so no version points at missing or partial files.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.exceptions import MlflowException

from ..distill import CHECKPOINT, Hooks, History, distill
from ..errors import CmiddError, ConfigError, IntegrityError
from ..files import atomic_write, sha256_file
from ..lam import LAM_KEY, lam_effective
from ..outdir import owned
from ..protocol import TAG_JSON, Protocol, protocol_of_job
from ..runner import CURVES, JobResult, Loop, check_job_data, check_resume_point, load_job_data, run_job
from ..synthetic import content_sha256
from ._bounds import store_call_bound_s
from ._baselines import log_draws
from ._client import (SYNTHETIC, TAG_ERROR, client_for, end_run, log_metrics, log_params, metrics_at, mlflow_errors,
                      open_run, resolve_uri, set_tags)
from ._hooks import TAG_SHA, TAG_SLOT, TAG_STEP, MlflowHooks
from ._proxies import publish_experts, publish_proxies, resolve_registry_proxies
from ._sets import register_distilled, register_set, verify_remote_set
from ._tags import distill_tags, job_params, job_tags
from ._ui import log_key_metrics

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"  # in a distill job's output folder: its run, continued by --resume


@dataclass
class TrackedRun:
    """A finished tracked job: its result, its MLflow run and the versions it registered (if any)."""

    result: JobResult
    run_id: str
    uri: str
    versions: list[dict[str, Any]]  # [{"name", "version", "alias"}], empty for evaluate jobs


def tracked_run(job, uri: str | None = None, resume_run_id: str | None = None, resume: bool = False,
                hooks: Hooks | None = None, data=None, experiment: str | None = None,
                parent_run_id: str | None = None, register: bool = True,
                tags: dict[str, str] | None = None, loop: Loop = distill,
                resume_hint: str | None = None) -> TrackedRun:
    """Run a validated job inside an MLflow run, log everything, verify the artifacts, then register.

    Args:
        job: a ``DistillJob``, ``PretrainProxiesJob``, ``EvaluateJob`` or ``ExpertsJob``.
        uri: tracking URI (``resolve_uri`` rules).
        resume_run_id: continue this run from its last checkpoint in MLflow (downloaded into
            ``job.output.dir``); the config must equal the run's params.
        resume: without ``resume_run_id``: continue from the local checkpoint (verified first), in the run that
            ``<output.dir>/mlflow_run.json`` records if it is unfinished and in this store, else in a new run.
            Without ``resume``, an unfinished recorded run (a killed start of this job) is marked KILLED.
        hooks: extra loop hooks (Tune reports, stopping rules), called after logging.
        data: the loaded data set (loaded from ``job.data`` if None).
        experiment: experiment name (default ``job.name``); a search passes its own.
        parent_run_id: the search's run, for trial runs (tag ``mlflow.parentRunId``).
        register: register the distilled set (a search registers only its top-k trials, at the end).
        tags: extra run tags (a search's trial id, the node it ran on).
        loop: the distillation loop (``cmidd.ray.pick_loop(job)`` for Ray Train jobs; the caller chooses, so
            this wing never imports the Ray wing).
        resume_hint: the command that resumes this job, for the one line a tracking outage ends with.

    Returns:
        TrackedRun.

    Raises:
        ConfigError: bad input (unknown run to resume, changed config, bad URI, ...), before any run starts.
        CmiddError: the job or MLflow failed; the run is then FAILED.
    """
    uri = resolve_uri(uri)
    data = data if data is not None else load_job_data(job)
    check_job_data(job, data)  # bad input fails before the store is touched: nothing written
    local_step = None if resume_run_id else check_resume_point(job, resume)  # a damaged one fails before a run
    with owned(job.output.dir):  # before the store is touched: a second job on this folder creates no run
        return _tracked(job, uri, resume_run_id, resume, hooks, data, experiment, parent_run_id, register, tags,
                        loop, resume_hint, local_step)


def _tracked(job, uri: str, resume_run_id: str | None, resume: bool, hooks: Hooks | None, data, experiment: str | None,
             parent_run_id: str | None, register: bool, tags: dict[str, str] | None, loop: Loop,
             resume_hint: str | None, local_step: int | None) -> TrackedRun:
    client = client_for(uri)
    with mlflow_errors():
        fetch = True
        recorded = None if resume_run_id else _recorded_run(client, job, uri)
        if resume and recorded is not None:  # continue the interrupted job's own run
            resume_run_id = recorded
            fetch = not (job.output.dir / CHECKPOINT).is_file()  # the local one (verified above) is as recent
            log.info("--resume: continuing run %s (recorded in %s)", recorded, job.output.dir / RUN_FILE)
        elif recorded is not None:  # a fresh start: the old run could never end otherwise
            _supersede(client, recorded)
        local = resolve_registry_proxies(job, data, uri, client)  # params and tags keep the job as given
        skip, slot = _reopen(client, job, resume_run_id, fetch, None if fetch else local_step) if resume_run_id \
            else (0, None)
    extra = dict(tags or {}) | ({"proxies.local_dir": str(local.proxies.dir)} if local is not job else {})
    protocol = protocol_of_job(job, data)  # the evaluation protocol its scores were made under
    extra |= protocol.tags() if protocol is not None else {}
    if resume_run_id:
        spec = {"run_id": resume_run_id, "tags": extra}
    else:
        parent = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
        spec = {"experiment": experiment or job.name, "run_name": job.name, "tags": job_tags(job) | parent | extra,
                "params": job_params(job)}
    with open_run(client, **spec) as run:
        log.info("mlflow run %s of job %r", run.run_id, job.name)
        if job.kind == "distill":
            _record_run(job.output.dir, run.run_id, uri)
        if not resume_run_id:
            try:
                with mlflow_errors():
                    log_data_input(client, run.run_id, job, data)
            except CmiddError as e:  # a record for the UI only: a store lost now is met by the loop's hooks (the
                log.warning("the data set's input record was not logged: %s", e)  # outage budget, the resume line)
        hooks_ml = MlflowHooks(client, run.run_id, inner=hooks, skip_through=skip, slot=slot,
                               call_bound=store_call_bound_s(uri),
                               where=f"MLflow store {uri}",
                               resume_hint=resume_hint or f"cmidd run JOB.yaml --resume --tracking-uri {uri}")
        result = run_job(local, hooks_ml, resume=bool(resume_run_id) or resume, data=data, loop=loop)
        with mlflow_errors():
            hooks_ml.flush()
            _log_result(client, run.run_id, result, hooks_ml)
            if job.kind == "distill":
                _log_lambda(client, run.run_id, job, result)
            publish = PUBLISHERS.get(job.kind)
            if publish is not None:
                publish(client, run.run_id, job, result, run.versions, register)
    return TrackedRun(result, run.run_id, uri, run.versions)


def _record_run(outdir: Path, run_id: str, uri: str) -> None:
    """Write ``<outdir>/mlflow_run.json``: the run a later ``--resume`` of this job continues."""
    outdir.mkdir(parents=True, exist_ok=True)
    atomic_write(outdir / RUN_FILE, json.dumps({"run_id": run_id, "uri": uri}).encode())


def _recorded_run(client: MlflowClient, job, uri: str) -> str | None:
    """The unfinished run of this store that ``<output.dir>/mlflow_run.json`` names (None if none, if it is in
    another store, gone, or FINISHED)."""
    path = job.output.dir / RUN_FILE
    if job.kind != "distill" or not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
        run_id, rec_uri = str(rec["run_id"]), str(rec["uri"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring %s: %s", path, e)
        return None
    if rec_uri != uri:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    if run.info.status == "FINISHED" or run.info.lifecycle_stage != "active":
        return None
    return run_id


def _supersede(client: MlflowClient, run_id: str) -> None:
    """A job started afresh over an interrupted one: the interrupted run (RUNNING after a kill) ends KILLED."""
    status = client.get_run(run_id).info.status
    if status == "RUNNING":
        set_tags(client, run_id, {TAG_ERROR: "superseded: the job was started again without --resume"})
        end_run(client, run_id, "KILLED")
        log.info("run %s of an earlier, interrupted start of this job marked KILLED", run_id)


def _reopen(client: MlflowClient, job, run_id: str, fetch: bool = True,
            local_step: int | None = None) -> tuple[int, str | None]:
    """Check that ``run_id`` can be resumed by ``job``, fetch its checkpoint (unless ``fetch`` is False: the
    verified local one, at ``local_step``, is at least as recent), set it RUNNING again and tag the step it
    resumes from (``cmidd.resumed_from_step``: the local checkpoint's step, or the fetched one's).

    Returns:
        (the last step MLflow already has, the checkpoint slot the run's tag names).
    """
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
    if slot and fetch:
        _fetch_checkpoint(client, run_id, slot, run.data.tags[TAG_SHA], job.output.dir)
        log.info("resuming run %s from its checkpoint at step %s", run_id, run.data.tags.get(TAG_STEP))
    logged = [m.step for m in client.get_metric_history(run_id, "loss_dd")]
    client.update_run(run_id, status="RUNNING")
    step = str(local_step) if local_step is not None else run.data.tags.get(TAG_STEP, "0")
    set_tags(client, run_id, {"cmidd.resumed_from_step": step})
    return max(logged, default=0), slot


def _fetch_checkpoint(client: MlflowClient, run_id: str, slot: str, sha: str, outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=outdir, prefix=".ckpt-") as tmp:
        got = Path(client.download_artifacts(run_id, f"{slot}/{CHECKPOINT}", tmp))
        if sha256_file(got) != sha:
            raise IntegrityError(
                f"runs:/{run_id}/{slot}/{CHECKPOINT}: sha256 mismatch with the run's tag {TAG_SHA}"
            )
        os.replace(got, outdir / CHECKPOINT)


def log_data_input(client: MlflowClient, run_id: str, job, data) -> None:
    """The job's data set as the run's input (MLflow's Datasets panel): name, a digest of the train split's content,
    where it comes from (name, root, split seed, image size) and its size; context ``train``."""
    source = {"dataset": data.name, "root": str(job.data.root) if getattr(job, "data", None) and job.data.root
              else None, "split_seed": job.data.split_seed if getattr(job, "data", None) else None,
              "im_size": data.im_size}
    profile = {"train": int(data.train_y.shape[0]), "test": int(data.test_y.shape[0]), "classes": data.num_classes,
               "channels": data.channels}
    entity = Dataset(name=data.name, digest=content_sha256(data.train_x, data.train_y)[:16], source_type="cmidd",
                     source=json.dumps(source, sort_keys=True), profile=json.dumps(profile, sort_keys=True))
    client.log_inputs(run_id, [DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, "train")])])


def _log_result(client: MlflowClient, run_id: str, result: JobResult, hooks: MlflowHooks) -> None:
    """Final metrics (at the last step), curves the hooks did not see, result.json and history.json."""
    history = result.history
    if history is not None:
        log_metrics(client, run_id, _backfill(history, hooks.first_step, hooks.skip_through))
    last = history.step[-1] if history is not None and history.step else 0
    log_metrics(client, run_id, metrics_at(last, {k: v for k, v in result.metrics.items()
                                                   if isinstance(v, (int, float))}))
    for name in ("result.json", "history.json", CURVES):
        if (result.outdir / name).is_file():
            client.log_artifact(run_id, str(result.outdir / name))


def _log_lambda(client: MlflowClient, run_id: str, job, result: JobResult) -> None:
    """The lambda the loop used as a param (``cmi.lam_effective``) and in the run's tags (``lambda``, 3
    significant digits): an alpha job's value is known only now."""
    if LAM_KEY in result.metrics:
        log_params(client, run_id, {LAM_KEY: repr(float(result.metrics[LAM_KEY]))})
    set_tags(client, run_id, distill_tags(job, result.metrics))
    last = result.history.step[-1] if result.history is not None and result.history.step else 0
    log_key_metrics(client, run_id, result.metrics,  # the key numbers again, under names the UI shows first
                    lam_effective(job.cmi.lam, job.cmi.alpha, result.metrics.get(LAM_KEY), job.cmi.on), last)


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


# ----------------------------------------------------------------------------------------------------
# publishing, by job kind

Publisher = Callable[[MlflowClient, str, Any, JobResult, list[dict[str, Any]], bool], None]
"""``(client, run_id, job, result, created, register)``: upload, verify by download, register (appending
each new version to ``created`` as soon as it exists)."""


def _publish_distilled(client: MlflowClient, run_id: str, job, result: JobResult, created: list[dict[str, Any]],
                       register: bool) -> None:
    """``synthetic/`` uploaded and verified; registered unless ``register`` is False (search trials)."""
    client.log_artifacts(run_id, str(result.outdir / SYNTHETIC), SYNTHETIC)
    verify_remote_set(client, run_id, SYNTHETIC, result.synset.sha256())
    if register:
        register_distilled(client, run_id, job, result, created)


def _publish_proxies(client: MlflowClient, run_id: str, job, result: JobResult, created: list[dict[str, Any]],
                     register: bool) -> None:
    publish_proxies(client, run_id, job, Path(result.extra["proxies_dir"]), created)


def _publish_experts(client: MlflowClient, run_id: str, job, result: JobResult, created: list[dict[str, Any]],
                     register: bool) -> None:
    publish_experts(client, run_id, Path(result.extra["experts_dir"]), created)


def _publish_ensemble(client: MlflowClient, run_id: str, job, result: JobResult, created: list[dict[str, Any]],
                      register: bool) -> None:
    """The combined set: its IPC and method as run tags (known only now), ``synthetic/`` uploaded and verified,
    then registered with its sources (``ensemble_of``) and mode."""
    synset, made_of = result.synset, {"ensemble_of": json.dumps(job.source_labels()), "ensemble_mode": job.mode}
    class_source = synset.meta.get("class_source")
    set_tags(client, run_id, {"ipc": str(synset.ipc), "method": synset.meta["method"],
                              **({"ensemble.class_source": json.dumps(class_source)} if class_source else {})})
    client.log_artifacts(run_id, str(result.outdir / SYNTHETIC), SYNTHETIC)
    verify_remote_set(client, run_id, SYNTHETIC, synset.sha256())  # only a verified set is registered
    if register:
        register_set(client, run_id, synset, result.metrics,
                     f"ensemble ({job.mode}) of {', '.join(job.source_labels())}",
                     {"method": synset.meta["method"], **made_of}, created)


def _publish_baseline(client: MlflowClient, run_id: str, job, result: JobResult, created: list[dict[str, Any]],
                      register: bool) -> None:
    """Each scored draw as a run of kind ``baseline`` nested under the job's run, under the protocol the job's run
    records (its ``protocol.json`` tag), so that ``cmidd best`` pairs the sets of that protocol with them."""
    run = client.get_run(run_id)
    protocol = Protocol.from_json(run.data.tags[TAG_JSON])
    experiment = client.get_experiment(run.info.experiment_id).name
    log_draws(result, protocol, job.ipc, job.eval, job.seed, experiment, client=client, parent_run_id=run_id)


PUBLISHERS: dict[str, Publisher] = {
    "baseline": _publish_baseline,
    "distill": _publish_distilled,
    "pretrain-proxies": _publish_proxies,
    "experts": _publish_experts,
    "ensemble": _publish_ensemble,
}  # evaluate jobs publish nothing beyond their metrics and result.json

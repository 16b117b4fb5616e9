"""Ensembles of distilled sets through MLflow: fetch verified sources, combine, evaluate, log, register.

Sources are either the top-k trials of a search (child runs of ``RUN_ID``: tag ``mlflow.parentRunId``,
FINISHED, with a ``synthetic/`` artifact, ranked by ``acc/cross_arch_mean``) or registered versions of
``distilled-<dataset>-ipc<k>``. Every source is downloaded and its checksums verified before use. The
combined set (``ensemble.combine_sets``) is evaluated like any set, logged as a run of kind ``ensemble``
(experiment ``ensemble-<dataset>``), uploaded, verified by download, and only then registered under
``distilled-<dataset>-ipc<k'>`` with the tag ``ensemble_of`` listing its sources (and ``champion`` moved
if it is the best).

Example:
    >>> r = ensemble_from_search("3f2a...", top=3, mode="concat", uri="sqlite:///mlflow.db")
    >>> r.version["name"], r.metrics["acc/ensemble"]
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import EvalCfg, flatten
from .data import load_dataset
from .ensemble import combine_sets
from .errors import ConfigError, UnknownNameError
from .evaluate import evaluate
from .synthetic import SyntheticSet
from .tracking import (
    CHAMPION, DEFAULT_METRIC, SYNTHETIC, ensure_model, fail_run, load_verified, log_params, metrics_at, set_tags,
    end_run, client_for, code_version, ensure_experiment, log_metrics, mlflow_errors, move_champion, pull,
    resolve_uri, set_model_name, verify_remote_set,
)

log = logging.getLogger(__name__)


@dataclass
class EnsembleResult:
    """A logged and registered ensemble set."""

    synset: SyntheticSet
    run_id: str
    metrics: dict[str, float]
    rows: list[dict]
    version: dict[str, Any]  # {"name", "version", "alias"}
    sources: list[str]


def search_children(client, parent_run_id: str, top: int, metric: str = DEFAULT_METRIC) -> list:
    """The ``top`` best FINISHED child runs of ``parent_run_id`` that have ``metric`` and a ``synthetic/``
    artifact, best first (ties: the earlier run).

    Raises:
        UnknownNameError: no such parent run, or it has no usable child.
    """
    from mlflow.exceptions import MlflowException

    try:
        parent = client.get_run(parent_run_id)
    except MlflowException:
        raise UnknownNameError(f"--from-search: no run {parent_run_id!r} in this tracking store") from None
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' AND attributes.status = 'FINISHED'",
        max_results=10_000,
    )
    ranked = sorted((r for r in runs if metric in r.data.metrics),
                    key=lambda r: (-r.data.metrics[metric], r.info.start_time))
    picked = [r for r in ranked if any(f.path == f"{SYNTHETIC}/manifest.json"
                                       for f in client.list_artifacts(r.info.run_id, SYNTHETIC))][:top]
    if not picked:
        raise UnknownNameError(
            f"--from-search: run {parent_run_id} has no FINISHED child run with {metric} and a {SYNTHETIC}/ artifact"
        )
    if len(picked) < top:
        log.warning("--top %d: only %d usable child runs of %s", top, len(picked), parent_run_id)
    return picked


def _fetch_run_set(client, run_id: str) -> SyntheticSet:
    with tempfile.TemporaryDirectory(prefix="cmidd-ens-") as tmp:
        got = Path(client.download_artifacts(run_id, SYNTHETIC, tmp))
        return load_verified(got, f"runs:/{run_id}/{SYNTHETIC}")


def ensemble_from_search(parent_run_id: str, top: int, mode: str, eval_cfg: EvalCfg | None = None,
                         uri: str | None = None, seed: int = 0) -> EnsembleResult:
    """Combine the synthetic sets of the ``top`` best trials of a search (see ``search_children``)."""
    uri = resolve_uri(uri)
    with mlflow_errors():
        client = client_for(uri)
        runs = search_children(client, parent_run_id, top)
        sets = [_fetch_run_set(client, r.info.run_id) for r in runs]
    sources = [f"runs:/{r.info.run_id}" for r in runs]
    return build_ensemble(sets, sources, mode, eval_cfg, uri, seed, {"ensemble.from_search": parent_run_id})


def ensemble_from_versions(dataset: str, ipc: int, versions: list[int], mode: str, eval_cfg: EvalCfg | None = None,
                           uri: str | None = None, seed: int = 0) -> EnsembleResult:
    """Combine registered versions of ``distilled-<dataset>-ipc<ipc>`` (pulled with checksums verified)."""
    if len(versions) < 2 or len(set(versions)) != len(versions):
        raise ConfigError(f"--versions: need two or more distinct versions, got {versions}")
    uri = resolve_uri(uri)
    name = set_model_name(dataset, ipc)
    sets = []
    with tempfile.TemporaryDirectory(prefix="cmidd-ens-") as tmp:
        for v in versions:
            sets.append(SyntheticSet.load(pull(dataset, ipc, Path(tmp) / f"v{v}", version=v, uri=uri)))
    sources = [f"{name}/{v}" for v in versions]
    return build_ensemble(sets, sources, mode, eval_cfg, uri, seed, {"ensemble.from_versions": ",".join(sources)})


def build_ensemble(sets: list[SyntheticSet], sources: list[str], mode: str, eval_cfg: EvalCfg | None, uri: str,
                   seed: int = 0, extra_params: dict[str, str] | None = None) -> EnsembleResult:
    """Combine ``sets`` (best first), evaluate, log a run, upload and verify, then register.

    Any failure ends the run FAILED and removes a version it created.
    """
    eval_cfg = eval_cfg or EvalCfg()
    meta = sets[0].meta
    data = load_dataset(meta["dataset"], im_size=meta.get("im_size"))
    scores = None
    if mode == "per-class-best":  # score each source per class with the same protocol, then pick
        scores = torch.tensor([evaluate(s.images, s.labels, data, eval_cfg, seed).class_acc for s in sets])
    synset = combine_sets(sets, mode, scores, sources)  # bad input raises before any run exists
    client = client_for(uri)
    dataset = str(meta["dataset"])
    tags = {"kind": "ensemble", "dataset": dataset, "ipc": str(synset.ipc), "method": synset.meta["method"],
            "ensemble_of": json.dumps(sources), "code_version": code_version(), "mlflow.source.name": "cmidd"}
    params = {"ensemble.mode": mode, "ensemble.sources": json.dumps(sources), "seed": str(seed),
              **{f"eval.{k}": json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                 for k, v in flatten(eval_cfg.model_dump(mode="json")).items()}, **(extra_params or {})}
    with mlflow_errors():
        exp = ensure_experiment(f"ensemble-{dataset}", client=client)
        run_id = client.create_run(exp, run_name=f"ensemble-{mode}-ipc{synset.ipc}", tags=tags).info.run_id
    created: list[dict[str, Any]] = []
    try:
        with mlflow_errors():
            log_params(client, run_id, params)
            if scores is not None:
                set_tags(client, run_id, {"ensemble.class_source": json.dumps(synset.meta["class_source"])})
        res = evaluate(synset.images, synset.labels, data, eval_cfg, seed)
        metrics = res.metrics()
        with mlflow_errors():
            log_metrics(client, run_id, metrics_at(0, metrics))
            with tempfile.TemporaryDirectory(prefix="cmidd-ens-") as tmp:
                synset.save(Path(tmp) / SYNTHETIC)
                client.log_artifacts(run_id, str(Path(tmp) / SYNTHETIC), SYNTHETIC)
            verify_remote_set(client, run_id, SYNTHETIC, synset.sha256())  # only a verified set is registered
            version = _register(client, run_id, synset, sources, mode, metrics, created)
            end_run(client, run_id, "FINISHED")
    except BaseException as e:
        fail_run(client, run_id, e, created)
        raise
    return EnsembleResult(synset, run_id, metrics, res.rows(synset.meta["method"]), version, sources)


def _register(client, run_id: str, synset: SyntheticSet, sources: list[str], mode: str, metrics: dict[str, float],
              created: list[dict[str, Any]]) -> dict[str, Any]:
    """A version of ``distilled-<dataset>-ipc<k'>`` with ``ensemble_of``; ``champion`` moved if best."""
    dataset, ipc = str(synset.meta["dataset"]), synset.ipc
    name = set_model_name(dataset, ipc)
    ensure_model(client, name, f"Distilled {dataset} sets, {ipc} images per class",
                  {"dataset": dataset, "ipc": str(ipc)})
    accs = {k: f"{v:.6g}" for k, v in metrics.items() if k.startswith(("acc/", "acc_std/", "ece/"))}
    tags = {"method": synset.meta["method"], "ensemble_of": json.dumps(sources), "ensemble_mode": mode,
            "dataset": dataset, "ipc": str(ipc), "im_size": str(synset.meta["im_size"]),
            "content_sha256": synset.sha256(), "code_version": code_version(), **accs}
    mv = client.create_model_version(name, f"runs:/{run_id}/{SYNTHETIC}", run_id=run_id, tags=tags,
                                     description=f"ensemble ({mode}) of {', '.join(sources)}")
    entry = {"name": name, "version": int(mv.version), "alias": None}
    created.append(entry)
    champion = move_champion(client, name, also_run=run_id)
    entry["alias"] = CHAMPION if champion == entry["version"] else None
    log.info("registered %s version %s (ensemble of %d; champion: version %s)", name, mv.version, len(sources),
             champion)
    return entry

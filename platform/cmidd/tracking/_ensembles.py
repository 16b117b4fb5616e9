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
from mlflow.exceptions import MlflowException

from ..config import EvalCfg
from ..data import load_dataset
from ..ensemble import combine_sets
from ..device import resolve_device
from ..errors import ConfigError, UnknownNameError
from ..evaluate import evaluate
from ..protocol import Protocol
from ..synthetic import SyntheticSet
from ._client import DEFAULT_METRIC, SYNTHETIC, client_for, log_metrics, metrics_at, mlflow_errors, open_run, \
    resolve_uri, set_tags
from ._sets import load_verified, pull, register_set, set_model_name, verify_remote_set
from ._tags import flat_params, run_tags

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
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException:
        raise UnknownNameError(f"--from-search: no run {parent_run_id!r} in this tracking store") from None
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' AND attributes.status = 'FINISHED' "
                      "AND tags.kind = 'distill'",
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

    Args:
        sets: the verified source sets, best first.
        sources: where each came from (``runs:/<id>`` or ``<model>/<version>``), same order.
        mode: ``concat`` or ``per-class-best`` (``ensemble.combine_sets``).
        eval_cfg: how to evaluate the combined set (default ``EvalCfg()``).
        uri: tracking URI (already resolved).
        seed: evaluation seed.
        extra_params: more run params (where the sources were picked from).

    Returns:
        EnsembleResult.
    """
    eval_cfg = eval_cfg or EvalCfg()
    meta = sets[0].meta
    data = load_dataset(meta["dataset"], im_size=meta.get("im_size"))
    device = resolve_device("auto")  # a GPU when there is one, as a job's default device
    scores = None
    if mode == "per-class-best":  # score each source per class with the same protocol, then pick
        scores = torch.tensor([evaluate(s.images, s.labels, data, eval_cfg, seed, device).class_acc for s in sets])
    synset = combine_sets(sets, mode, scores, sources)  # bad input raises before any run exists
    client = client_for(uri)
    dataset = str(meta["dataset"])
    made_of = {"ensemble_of": json.dumps(sources)}
    protocol = Protocol.of(eval_cfg, dataset, 0, data.im_size)  # load_dataset's default split seed
    tags = run_tags("ensemble", dataset, ipc=str(synset.ipc), method=synset.meta["method"], **made_of,
                    **protocol.tags())
    params = {"ensemble.mode": mode, "ensemble.sources": json.dumps(sources), "seed": str(seed),
              **flat_params({"eval": eval_cfg.model_dump(mode="json")}), **(extra_params or {})}
    with open_run(client, f"ensemble-{dataset}", f"ensemble-{mode}-ipc{synset.ipc}", tags, params) as run:
        if scores is not None:
            with mlflow_errors():
                set_tags(client, run.run_id, {"ensemble.class_source": json.dumps(synset.meta["class_source"])})
        res = evaluate(synset.images, synset.labels, data, eval_cfg, seed, device)
        metrics = res.metrics()
        with mlflow_errors():
            log_metrics(client, run.run_id, metrics_at(0, metrics))
            with tempfile.TemporaryDirectory(prefix="cmidd-ens-") as tmp:
                synset.save(Path(tmp) / SYNTHETIC)
                client.log_artifacts(run.run_id, str(Path(tmp) / SYNTHETIC), SYNTHETIC)
            verify_remote_set(client, run.run_id, SYNTHETIC, synset.sha256())  # only a verified set is registered
            version = register_set(client, run.run_id, synset, metrics,
                                   f"ensemble ({mode}) of {', '.join(sources)}",
                                   {"method": synset.meta["method"], **made_of, "ensemble_mode": mode},
                                   run.versions)
    return EnsembleResult(synset, run.run_id, metrics, res.rows(synset.meta["method"]), version, sources)

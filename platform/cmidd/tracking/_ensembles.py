"""Ensembles of distilled sets through MLflow: fetch verified sources, then run an ``ensemble`` job on them.

Sources are either the top-k trials of a search (child runs of ``RUN_ID``: tag ``mlflow.parentRunId``,
FINISHED, with a ``synthetic/`` artifact, ranked by ``acc/cross_arch_mean``) or registered versions of
``distilled-<dataset>-ipc<k>``. Every source is downloaded and its checksums verified before use. Then the
combination is an ``ensemble`` job like any other (``cmidd.runner``: combine, evaluate; ``tracked_run``: a run
of kind ``ensemble`` in experiment ``ensemble-<dataset>``; its publisher uploads the set, verifies it by
download and only then registers it under ``distilled-<dataset>-ipc<k'>`` with the tag ``ensemble_of`` listing
its sources, and ``champion`` moved if it is the best).

Example:
    >>> r = ensemble_from_search("3f2a...", top=3, mode="concat", uri="sqlite:///mlflow.db")
    >>> r.version["name"], r.metrics["acc/ensemble"]
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from ..config import EvalCfg, parse_job
from ..errors import ConfigError, UnknownNameError
from ..synthetic import SyntheticSet
from ._client import DEFAULT_METRIC, SYNTHETIC, client_for, mlflow_errors, resolve_uri
from ._run import tracked_run
from ._sets import pull, set_model_name

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


def ensemble_from_search(parent_run_id: str, top: int, mode: str, eval_cfg: EvalCfg | None = None,
                         uri: str | None = None, seed: int = 0) -> EnsembleResult:
    """Combine the synthetic sets of the ``top`` best trials of a search (see ``search_children``)."""
    uri = resolve_uri(uri)
    with tempfile.TemporaryDirectory(prefix="cmidd-ens-") as tmp:
        with mlflow_errors():
            client = client_for(uri)
            runs = search_children(client, parent_run_id, top)
            folders = []
            for i, r in enumerate(runs):
                (Path(tmp) / str(i)).mkdir()
                folders.append(Path(client.download_artifacts(r.info.run_id, SYNTHETIC, f"{tmp}/{i}")))
        sources = [f"runs:/{r.info.run_id}" for r in runs]
        return run_ensemble(folders, sources, mode, eval_cfg, uri, seed, {"ensemble.from_search": parent_run_id},
                            Path(tmp) / "out")


def ensemble_from_versions(dataset: str, ipc: int, versions: list[int], mode: str, eval_cfg: EvalCfg | None = None,
                           uri: str | None = None, seed: int = 0) -> EnsembleResult:
    """Combine registered versions of ``distilled-<dataset>-ipc<ipc>`` (pulled with checksums verified)."""
    if len(versions) < 2 or len(set(versions)) != len(versions):
        raise ConfigError(f"--versions: need two or more distinct versions, got {versions}")
    uri = resolve_uri(uri)
    name = set_model_name(dataset, ipc)
    with tempfile.TemporaryDirectory(prefix="cmidd-ens-") as tmp:
        folders = [pull(dataset, ipc, Path(tmp) / f"v{v}", version=v, uri=uri) for v in versions]
        sources = [f"{name}/{v}" for v in versions]
        return run_ensemble(folders, sources, mode, eval_cfg, uri, seed,
                            {"ensemble.from_versions": ",".join(sources)}, Path(tmp) / "out")


def run_ensemble(folders: list[Path], sources: list[str], mode: str, eval_cfg: EvalCfg | None, uri: str,
                 seed: int, tags: dict[str, str], outdir: Path) -> EnsembleResult:
    """The ``ensemble`` job of the verified set ``folders`` (best first), tracked: a run of kind ``ensemble`` in
    experiment ``ensemble-<dataset>``, its set registered (any failure ends the run FAILED and removes a version
    it created). Bad input (sets that do not combine) fails before the run exists.

    Args:
        folders: the verified source sets, best first.
        sources: where each came from (``runs:/<id>`` or ``<model>/<version>``), same order.
        mode: ``concat`` or ``per-class-best`` (``ensemble.combine_sets``).
        eval_cfg: how to evaluate the combined set (default ``EvalCfg()``).
        uri: tracking URI (already resolved).
        seed: evaluation seed.
        tags: more run tags (where the sources were picked from).
        outdir: the job's output folder.
    """
    meta = SyntheticSet.load(folders[0]).meta
    dataset = str(meta["dataset"])
    job = parse_job({"kind": "ensemble",
        "name": f"ensemble-{mode}", "seed": seed, "device": "auto",  # a GPU when there is one
        "data": {"name": dataset, "im_size": meta.get("im_size")}, "output": {"dir": str(outdir)},
        "sets": [str(f) for f in folders], "sources": sources, "mode": mode,
        "eval": (eval_cfg or EvalCfg()).model_dump(mode="json")}, "cmidd ensemble")
    done = tracked_run(job, uri, experiment=f"ensemble-{dataset}", tags=tags)
    return EnsembleResult(done.result.synset, done.run_id, done.result.metrics, done.result.rows,
                          done.versions[0], sources)

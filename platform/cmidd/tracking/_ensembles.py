"""The sources of an ensemble, fetched from MLflow: a search's top-k trials or registered versions, verified.

Sources are either the top-k trials of a search (child runs of ``RUN_ID``: tag ``mlflow.parentRunId``,
FINISHED, with a ``synthetic/`` artifact, ranked by ``acc/cross_arch_mean``) or registered versions of
``distilled-<dataset>-ipc<k>``. Every source is downloaded into the caller's folder and its checksums verified
before use. The combination is an ``ensemble`` job like any other, run by the app (``cmidd.app.ensemble``:
``execute`` with this store; the runner combines and evaluates, ``tracked_run`` logs a run of kind ``ensemble``
and registers the set with the tag ``ensemble_of`` listing its sources).

Example:
    >>> src = search_sets("3f2a...", top=3, into=Path(tmp), uri="sqlite:///mlflow.db")
    >>> src.sources
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException

from ..errors import UnknownNameError
from ._client import DEFAULT_METRIC, SYNTHETIC, client_for, mlflow_errors, resolve_uri
from ._sets import pull, set_model_name

log = logging.getLogger(__name__)


@dataclass
class SourceSets:
    """Verified source sets in local folders (best first), where each came from, and the tags that say how they
    were picked."""

    folders: list[Path]
    sources: list[str]
    tags: dict[str, str] = field(default_factory=dict)

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


def search_sets(parent_run_id: str, top: int, into: Path, uri: str | None = None) -> SourceSets:
    """The synthetic sets of the ``top`` best trials of a search (``search_children``), downloaded into ``into``."""
    with mlflow_errors():
        client = client_for(resolve_uri(uri))
        runs = search_children(client, parent_run_id, top)
        folders = []
        for i, r in enumerate(runs):
            (Path(into) / str(i)).mkdir(parents=True)
            folders.append(Path(client.download_artifacts(r.info.run_id, SYNTHETIC, str(Path(into) / str(i)))))
    return SourceSets(folders, [f"runs:/{r.info.run_id}" for r in runs], {"ensemble.from_search": parent_run_id})


def version_sets(dataset: str, ipc: int, versions: list[int], into: Path, uri: str | None = None) -> SourceSets:
    """Registered versions of ``distilled-<dataset>-ipc<ipc>``, pulled into ``into`` with checksums verified."""
    uri = resolve_uri(uri)
    name = set_model_name(dataset, ipc)
    folders = [pull(dataset, ipc, Path(into) / f"v{v}", version=v, uri=uri) for v in versions]
    sources = [f"{name}/{v}" for v in versions]
    return SourceSets(folders, sources, {"ensemble.from_versions": ",".join(sources)})

"""``MlflowStore``: MLflow as a ``cmidd.store.Store`` (and ``Workflows``), a thin adapter over this wing's functions.

Each method hands over to the function that already does the work (``tracked_run``, ``best_set``, ``pull``, ...),
with the store's URI. The URI is kept as given and resolved by those functions, as before (``resolve_uri``): a
bad one fails where it always did, after the checks that come before it (``pull``'s ``--out``, ``--versions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..names import CROSS_ARCH_MEAN
from ._client import client_for, resolve_uri
from ._ensembles import SourceSets, search_sets, version_sets
from ._ranking import set_default_protocol
from ._reports import list_runs, log_report
from ._rescore import rescore_versions
from ._run import tracked_run
from ._search import pareto_best
from ._sets import best_per_protocol, best_set, load_set, pull, set_model_name
from ._ui import log_summary, parent_run, run_ui_hint, tag_gains


class MlflowStore:
    """The MLflow store at ``uri`` (``resolve_uri`` rules: None = ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db`` in the working folder)."""

    def __init__(self, uri: str | None = None) -> None:
        self.given = uri

    @property
    def uri(self) -> str:
        return resolve_uri(self.given)

    # runs
    def track(self, job, loop, *, resume_run_id=None, resume=False, hooks=None, data=None, experiment=None,
              resume_hint=None, parent_run_id=None, tags=None):
        return tracked_run(job, self.given, resume_run_id=resume_run_id, resume=resume, hooks=hooks, data=data,
                           loop=loop, experiment=experiment, resume_hint=resume_hint, parent_run_id=parent_run_id,
                           tags=tags)

    def log_report(self, experiment: str, run_name: str, params: dict[str, Any], metrics: dict[str, float],
                   folder: Path, files: list[str]) -> str:
        return log_report(self.uri, experiment, run_name, params, metrics, folder, files)

    def parent_run(self, experiment: str, run_name: str, kind: str, dataset: str, **tags: str):
        return parent_run(client_for(self.uri), experiment, run_name, kind, dataset, **tags)

    def log_summary(self, run_id: str, files: list[Path], metrics: dict[str, float],
                    tags: dict[str, str] | None = None) -> None:
        log_summary(client_for(self.uri), run_id, files, metrics, tags)

    def tag_gains(self, answer: dict[str, Any]) -> list[dict[str, Any]]:
        return tag_gains(client_for(self.uri), answer)

    def runs(self, n: int = 20, experiment: str | None = None) -> list[dict[str, Any]]:
        return list_runs(self.given, n, experiment)

    def run_hint(self, run_id: str) -> str:
        return run_ui_hint(self.uri, run_id)

    # sets
    def load_set(self, dataset: str, ipc: int, version: int | None = None, alias: str | None = None):
        return load_set(dataset, ipc, version, alias, self.given)

    def pull(self, dataset: str, ipc: int, out: str | Path, version: int | None = None, alias: str | None = None,
             protocol: str | None = None) -> Path:
        return pull(dataset, ipc, out, version=version, alias=alias, uri=self.given, protocol=protocol)

    def search_sets(self, parent_run_id: str, top: int, into: Path) -> SourceSets:
        return search_sets(parent_run_id, top, into, self.given)

    def version_sets(self, dataset: str, ipc: int, versions: list[int], into: Path) -> SourceSets:
        return version_sets(dataset, ipc, versions, into, self.given)

    # champions
    def best(self, dataset: str, ipc: int, metric: str = CROSS_ARCH_MEAN,
             protocol: str | None = None) -> dict[str, Any]:
        return best_set(dataset, ipc, metric, self.given, protocol)

    def best_per_protocol(self, dataset: str, ipc: int, metric: str = CROSS_ARCH_MEAN) -> list[dict[str, Any]]:
        return best_per_protocol(dataset, ipc, metric, self.given)

    def make_default(self, dataset: str, ipc: int, protocol: str, metric: str = CROSS_ARCH_MEAN) -> int:
        return set_default_protocol(client_for(self.uri), set_model_name(dataset, ipc), protocol, metric)

    # Workflows: what this store still orchestrates itself (a re-scoring's evaluate jobs, a search's front)
    def rescore(self, dataset: str, ipc: int, protocol: str, versions: list[int] | None, seed: int,
                device: str, scorer) -> list[dict[str, Any]]:
        return rescore_versions(scorer, dataset, ipc, protocol, versions, self.given, seed, device)

    def pareto_best(self, search: str, limits: dict[str, float]) -> dict[str, Any]:
        return pareto_best(search, limits, self.given)

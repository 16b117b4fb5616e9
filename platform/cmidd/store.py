"""The store seam: what the app needs from a system of record, as a ``typing.Protocol`` (no MLflow here).

``Store`` holds what ``cmidd.app`` and the CLI ask a store for today, and nothing more:

    runs       ``track`` (start a job's run, log it, finish it and register what it produced), ``log_report`` (one
               finished run with files), ``parent_run`` / ``log_summary`` / ``tag_gains`` (a workflow's parent run,
               its summary, the gains on its versions: the demo), ``runs`` (recent runs as rows), ``run_hint``
    sets       ``load_set`` (a registered set, checksums verified), ``pull`` (into a folder), ``search_sets`` and
               ``version_sets`` (an ensemble's sources, verified, into a folder)
    champions  ``best`` (the best version under one protocol), ``best_per_protocol``, ``make_default`` (the protocol
               ``champion`` follows)

MLflow's implementation is ``cmidd.tracking.store.MlflowStore`` (built from a tracking URI); ``cmidd.app.open_store``
builds it, so the CLI never imports the tracking wing. A new store is one class with these methods, handed to the
app's functions (``execute(job, track=True, store=...)``, ``best(store, ...)``; tests/test_store_seam.py has one).

Every evaluation is a job of the runner: an ensemble is an ``ensemble`` job the app runs with ``track``
(``cmidd.app.ensemble``), a re-scoring or a search's registration scores sets with ``evaluate`` jobs and the
random-real draws with ``baseline`` jobs, both by the ``Scorer`` the app hands the store (``cmidd.scoring.SCORER``);
the store records what they return. ``Workflows`` is
what the MLflow store still orchestrates itself beyond storing: a re-scoring (which versions to score, the runs
that record them) and a search's Pareto front. They are not part of ``Store`` (docs/layout.md, "Store seam").
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .names import CROSS_ARCH_MEAN

if TYPE_CHECKING:
    from .data import Dataset
    from .distill import Hooks
    from .runner import JobResult, Loop
    from .synthetic import SyntheticSet


class SourceSets(Protocol):
    """Verified sets in local folders (best first), where each came from (``runs:/<id>``, ``<model>/<version>``)
    and the run tags that say how they were picked."""

    folders: list[Path]
    sources: list[str]
    tags: dict[str, str]


class StoredRun(Protocol):
    """A finished tracked job: its result, its run and the versions it registered (``[{"name", "version",
    "alias"}]``, empty when it registered none)."""

    result: JobResult
    run_id: str
    uri: str
    versions: list[dict[str, Any]]


@runtime_checkable
class Store(Protocol):
    """A system of record for runs, distilled sets and their champions (see the module's docstring)."""

    @property
    def uri(self) -> str:
        """Where the store is (shown in messages, credentials never included)."""
        ...

    def track(self, job, loop: Loop, *, resume_run_id: str | None = None, resume: bool = False,
              hooks: Hooks | None = None, data: Dataset | None = None, experiment: str | None = None,
              resume_hint: str | None = None, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None) -> StoredRun:
        """Run ``job`` with ``loop`` inside a run of this store: start it, log it (with ``tags`` beside the job's
        own), finish it, register its set."""
        ...

    def log_report(self, experiment: str, run_name: str, params: dict[str, Any], metrics: dict[str, float],
                   folder: Path, files: list[str]) -> str:
        """One finished run holding ``params``, ``metrics`` and ``files`` of ``folder``; returns its id."""
        ...

    def parent_run(self, experiment: str, run_name: str, kind: str, dataset: str,
                   **tags: str) -> AbstractContextManager[str]:
        """A run that nests the runs made inside the block (pass its id as ``parent_run_id``); it ends finished,
        or failed with the error."""
        ...

    def log_summary(self, run_id: str, files: list[Path], metrics: dict[str, float],
                    tags: dict[str, str] | None = None) -> None:
        """A finished workflow's figures and tables, headline metrics and tags, on its (parent) run."""
        ...

    def tag_gains(self, answer: dict[str, Any]) -> list[dict[str, Any]]:
        """Each version's paired gain over random-real of a ``best`` answer, on the version and its run."""
        ...

    def runs(self, n: int = 20, experiment: str | None = None) -> list[dict[str, Any]]:
        """The ``n`` newest runs as rows (``run_id``, ``experiment``, ``kind``, ``status``, ...)."""
        ...

    def run_hint(self, run_id: str) -> str:
        """One line saying where to look at run ``run_id``."""
        ...

    def load_set(self, dataset: str, ipc: int, version: int | None = None,
                 alias: str | None = None) -> SyntheticSet:
        """A registered set (the champion unless ``version`` or ``alias``), checksums verified."""
        ...

    def pull(self, dataset: str, ipc: int, out: str | Path, version: int | None = None, alias: str | None = None,
             protocol: str | None = None) -> Path:
        """A registered set written into ``out`` (with its ``registry.json``), checksums verified."""
        ...

    def search_sets(self, parent_run_id: str, top: int, into: Path) -> SourceSets:
        """The sets of a search's ``top`` best finished trials, verified, in folders under ``into``."""
        ...

    def version_sets(self, dataset: str, ipc: int, versions: list[int], into: Path) -> SourceSets:
        """Registered versions of one data set and IPC, verified, in folders under ``into``."""
        ...

    def best(self, dataset: str, ipc: int, metric: str = CROSS_ARCH_MEAN,
             protocol: str | None = None) -> dict[str, Any]:
        """The best version under one evaluation protocol (``cmidd best --json``'s object)."""
        ...

    def best_per_protocol(self, dataset: str, ipc: int, metric: str = CROSS_ARCH_MEAN) -> list[dict[str, Any]]:
        """``best`` for every protocol the versions were scored under, the default protocol first."""
        ...

    def make_default(self, dataset: str, ipc: int, protocol: str, metric: str = CROSS_ARCH_MEAN) -> int:
        """Make ``protocol`` the one the alias ``champion`` follows; returns the version it now points at."""
        ...


class Scorer(Protocol):
    """The jobs of the runner a store's workflow has its sets scored by (``cmidd.scoring.SCORER``): the app hands
    one to the store, which records what they return and never evaluates a set itself."""

    def set(self, folder: Path, data: Dataset, eval_cfg, seed: int, device: str = "auto",
            workdir: Path | None = None, name: str = "score") -> JobResult:
        """An ``evaluate`` job of the verified set in ``folder``."""
        ...

    def random_real(self, data: Dataset, ipc: int, eval_cfg, eval_seed: int, draws: list[int],
                    device: str = "auto") -> JobResult:
        """A ``baseline`` job: the random-real ``draws``, each scored with ``eval_seed``."""
        ...


@runtime_checkable
class Workflows(Protocol):
    """What the MLflow store still orchestrates itself: a re-scoring (it picks the versions to score, has each
    scored by the ``Scorer`` the app hands it and records the scores) and a search's Pareto front."""

    def rescore(self, dataset: str, ipc: int, protocol: str, versions: list[int] | None, seed: int,
                device: str, scorer: Scorer) -> list[dict[str, Any]]:
        """Score registered sets under ``protocol`` by ``scorer``'s jobs and register the scored versions."""
        ...

    def pareto_best(self, search: str, limits: dict[str, float]) -> dict[str, Any]:
        """The best set of a multi-objective search's front within ``limits``."""
        ...

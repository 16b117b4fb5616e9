"""The evaluations a store's workflows need, each one a job of the runner (``cmidd.runner``).

Re-scoring a registered set under a protocol, scoring a search's top trial under its registration protocol and
scoring the random-real draws a set's gain is paired with are an ``evaluate`` or a ``baseline`` job on data
already loaded, run in a folder of their own (a temporary one, or the caller's). The tracking wing records what
they return; it never evaluates a set itself, and imports neither this module nor an evaluation: the app hands it
``SCORER`` (a ``cmidd.store.Scorer``; tests/test_store_seam.py checks both).

Example:
    >>> res = score_set(Path("runs/dm/synthetic"), data, job.eval, seed=0, workdir=Path(tmp))
    >>> res.metrics["acc/cross_arch_mean"]
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import parse_job

if TYPE_CHECKING:
    import torch

    from .config import EvalCfg
    from .data import Dataset
    from .runner import JobResult


def _device(device: str | torch.device) -> str:
    """A job's ``device`` field from a name or a resolved torch device (``cuda:1`` -> ``cuda``)."""
    return str(getattr(device, "type", device)).split(":")[0]


def _data_block(data: Dataset) -> dict[str, Any]:
    """The ``data`` block that names ``data`` in the job's record (the loaded data is handed to the runner)."""
    return {"name": data.name, "im_size": data.im_size,
            "split_seed": 0 if getattr(data, "split_seed", None) is None else int(data.split_seed)}


@contextlib.contextmanager
def _workdir(workdir: Path | None) -> Iterator[Path]:
    """``workdir``, or a temporary folder removed afterwards."""
    if workdir is not None:
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="cmidd-score-") as tmp:
        yield Path(tmp) / "job"


def score_set(folder: Path, data: Dataset, eval_cfg: EvalCfg, seed: int, device: str | torch.device = "auto",
              workdir: Path | None = None, name: str = "score") -> JobResult:
    """The ``evaluate`` job of the set in ``folder`` (checksums verified) on ``data`` under ``eval_cfg``.

    Raises:
        IntegrityError: a checksum of the set does not match.
        DataError: the set's images are not of ``data``'s shape.
    """
    from .runner import run_job

    with _workdir(workdir) as out:
        job = parse_job({"kind": "evaluate", "name": name, "seed": seed, "device": _device(device),
                         "data": _data_block(data), "synset": str(folder), "output": {"dir": str(out)},
                         "eval": eval_cfg.model_dump(mode="json") | {"baselines": []}}, "cmidd scoring")
        return run_job(job, data=data)


def score_random_real(data: Dataset, ipc: int, eval_cfg: EvalCfg, eval_seed: int, draws: list[int],
                      device: str | torch.device = "auto", workdir: Path | None = None) -> JobResult:
    """The ``baseline`` job: the random-real sets ``draws`` of ``ipc`` images per class, scored under ``eval_cfg``
    with the evaluation seed ``eval_seed`` (``JobResult.draws``, in the order of ``draws``)."""
    from .runner import run_job

    with _workdir(workdir) as out:
        job = parse_job({"kind": "baseline", "name": "random-real", "seed": eval_seed, "device": _device(device),
                         "data": _data_block(data), "ipc": ipc, "draws": list(draws), "output": {"dir": str(out)},
                         "eval": eval_cfg.model_dump(mode="json") | {"baselines": []}}, "cmidd scoring")
        return run_job(job, data=data)


class RunnerScorer:
    """``cmidd.store.Scorer`` by the runner's jobs: what the app hands a store's workflows."""

    def set(self, folder: Path, data: Dataset, eval_cfg: EvalCfg, seed: int, device: str | torch.device = "auto",
            workdir: Path | None = None, name: str = "score") -> JobResult:
        return score_set(folder, data, eval_cfg, seed, device, workdir, name)

    def random_real(self, data: Dataset, ipc: int, eval_cfg: EvalCfg, eval_seed: int, draws: list[int],
                    device: str | torch.device = "auto") -> JobResult:
        return score_random_real(data, ipc, eval_cfg, eval_seed, draws, device)


SCORER = RunnerScorer()

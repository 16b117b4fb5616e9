"""Baselines as runs: random-real (and the full-data ceiling) scored under a protocol, logged beside the sets.

A baseline run has tags ``kind=baseline``, ``baseline=<name>``, ``dataset``, ``ipc``, the ``protocol.*`` tags
of the protocol that scored it and, for random-real, ``baseline.draw`` (the seed that drew the images) and
``baseline.eval_seed`` (the evaluation seed: ``best`` pairs a set only with draws scored with its own); the
eval block and seed as params, the ``acc/...`` metrics of ``EvalResult.metrics`` and, for random-real, the
drawn images as ``synthetic/`` (verified after upload). It is not registered (a baseline must never become
``champion``); ``cmidd best`` links it by protocol, data set and IPC and prints the gain over the draws paired with the set (``_ranking.paired_baseline``, ``cmidd.gain``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow import MlflowClient

from ..errors import ConfigError
from ..gain import draw_seeds
from ..protocol import Protocol
from ..store import Scorer
from ..synthetic import SyntheticSet
from ._ranking import TAG_DRAW, TAG_EVAL_SEED
from ._client import SYNTHETIC, client_for, log_metrics, metrics_at, mlflow_errors, open_run, resolve_uri
from ._sets import verify_remote_set
from ._tags import flat_params, run_tags

BASELINES = ("random-real", "full")


def log_baseline(name: str, metrics: dict[str, float], protocol: Protocol, ipc: int, eval_cfg, seed: int,
                 experiment: str, uri: str | None = None, synset: SyntheticSet | None = None,
                 parent_run_id: str | None = None, client: MlflowClient | None = None,
                 extra_tags: dict[str, str] | None = None, draw: int | None = None) -> str:
    """Log one baseline's scores as a FINISHED run of kind ``baseline``; returns its run id.

    Args:
        name: ``random-real`` or ``full``.
        metrics: ``EvalResult.metrics()`` of the baseline under ``protocol``.
        protocol: the protocol that scored it (``Protocol.of`` the same eval block the sets used).
        ipc: images per class (random-real draws that many; the answer of ``best`` matches on it).
        eval_cfg: the eval block (logged as ``eval.*`` params).
        seed: the seed that drew the images and the evaluation seeds.
        experiment: the experiment (the demo's, the search's).
        uri: tracking URI.
        synset: the drawn set, uploaded as ``synthetic/`` and verified (None: metrics only).
        parent_run_id: a search's parent run.
        client: the store's client (instead of ``uri``).
        extra_tags: more run tags (the search's name).
        draw: the seed that drew the random-real images (default ``seed``).

    Raises:
        ConfigError: an unknown baseline name.
    """
    if name not in BASELINES:
        raise ConfigError(f"baseline: must be one of {', '.join(BASELINES)}, but got {name!r}")
    client = client or client_for(resolve_uri(uri))
    draws = {TAG_DRAW: str(seed if draw is None else draw), TAG_EVAL_SEED: str(seed)} if name == "random-real" else {}
    tags = run_tags("baseline", protocol.dataset, ipc=str(ipc), baseline=name, **protocol.tags(), **draws,
                    **(extra_tags or {}))
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    params = {"baseline": name, "ipc": str(ipc), "seed": str(seed),
              **flat_params({"eval": eval_cfg.model_dump(mode="json")})}
    with open_run(client, experiment, f"{name}-ipc{ipc}", tags, params) as run, mlflow_errors():
        log_metrics(client, run.run_id, metrics_at(0, {k: v for k, v in metrics.items()
                                                       if isinstance(v, (int, float))}))
        if synset is not None:
            with tempfile.TemporaryDirectory(prefix="cmidd-baseline-") as tmp:
                synset.save(Path(tmp) / SYNTHETIC)
                client.log_artifacts(run.run_id, str(Path(tmp) / SYNTHETIC), SYNTHETIC)
            verify_remote_set(client, run.run_id, SYNTHETIC, synset.sha256())
    return run.run_id


def log_random_real_draws(scorer: Scorer, data, ipc: int, protocol: Protocol, eval_cfg, eval_seed: int,
                          experiment: str, own_draw: int | None = None, device="cpu", skip: set[int] | None = None,
                          **log_kw) -> list[str]:
    """Score and log the random-real draws ``best`` pairs a set with (``cmidd.gain.draw_seeds``: ``own_draw``
    first, >= 3 in all) with the evaluation seed ``eval_seed``, one baseline run each; draws in ``skip`` (already
    logged) are left out. The scores come from one ``baseline`` job of ``scorer`` (``cmidd.scoring.SCORER``);
    ``log_kw`` goes to ``log_baseline`` (uri or client, parent_run_id, extra_tags).

    Returns:
        the new runs' ids.
    """
    todo = [d for d in draw_seeds(eval_seed, own_draw) if d not in (skip or set())]
    if not todo:
        return []
    return log_draws(scorer.random_real(data, ipc, eval_cfg, eval_seed, todo, device), protocol, ipc, eval_cfg,
                     eval_seed, experiment, **log_kw)


def log_draws(result, protocol: Protocol, ipc: int, eval_cfg, eval_seed: int, experiment: str,
              **log_kw) -> list[str]:
    """One baseline run per scored draw of a ``baseline`` job's ``result`` (``JobResult.draws``); returns their ids."""
    return [log_baseline("random-real", d.metrics, protocol, ipc, eval_cfg, eval_seed, experiment, synset=d.synset,
                         draw=d.draw, **log_kw) for d in result.draws]

"""A search's space and trials: ``SearchCfg.params`` as Optuna distributions, a trial's values as a distill job."""

from __future__ import annotations

import math
from typing import Any

from ..config import ZERO_ARM, DistillJob, SearchCfg, parse_job, set_path, trial_job_raw

TAG_TRIAL, TAG_NODE, TAG_STOPPED, TAG_SEARCH = "cmidd.tune_trial_id", "cmidd.node_id", "cmidd.search.stopped", \
    "cmidd.search"
FINAL = "final"  # key of the trial's last report (after the full evaluation); a trial without it was stopped
TUNE_DIR = "tune"


def optuna_space(cfg: SearchCfg) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Optuna distributions by searched path (plus ``cmi_on`` for the lambda = 0 arm) and the enqueued points."""
    import optuna.distributions as od

    space: dict[str, Any] = {}
    points: list[dict[str, Any]] = []
    for key, spec in cfg.params.items():
        if spec.loguniform is not None:
            space[key] = od.FloatDistribution(*spec.loguniform, log=True)
        elif spec.uniform is not None:
            space[key] = od.FloatDistribution(*spec.uniform)
        elif spec.int_ is not None:
            space[key] = od.IntDistribution(*spec.int_)
        else:
            space[key] = od.CategoricalDistribution(list(spec.choice))
        if spec.zero_arm:
            space[ZERO_ARM] = od.CategoricalDistribution([True, False])
    if ZERO_ARM in space:  # Tune wants every searched value in an enqueued point: the base job's, else a middle one
        points.append({k: False if k == ZERO_ARM else _start_value(cfg, k, d) for k, d in space.items()})
    return space, points


def _start_value(cfg: SearchCfg, key: str, dist) -> Any:
    """The base job's value of ``key`` if ``dist`` holds it, else the distribution's middle (geometric if log)."""
    node: Any = cfg.base_raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is not None and _inside(dist, node):
        return node
    if hasattr(dist, "choices"):
        return dist.choices[0]
    mid = math.sqrt(dist.low * dist.high) if dist.log else (dist.low + dist.high) / 2
    return int(round(mid)) if isinstance(dist.low, int) and not isinstance(dist.low, bool) else mid


def _inside(dist, value: Any) -> bool:
    """Whether ``dist`` can draw ``value``, from its public fields (``choices``; ``low``, ``high``, ``step``)."""
    if hasattr(dist, "choices"):
        return any(value == c and type(value) is type(c) for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not dist.low <= value <= dist.high:
        return False
    step = getattr(dist, "step", None)
    return step is None or math.isclose((value - dist.low) / step, round((value - dist.low) / step), abs_tol=1e-8)


def trial_job(cfg: SearchCfg, values: dict[str, Any], trial_id: str) -> DistillJob:
    """The trial's distill job: the base + sampled values, its own output folder ``<storage>/trials/<id>``."""
    raw = trial_job_raw(cfg, values)
    raw = set_path(raw, "output.dir", str(cfg.storage_dir / "trials" / trial_id))
    raw = set_path(raw, "name", f"{cfg.name}-{trial_id}")
    return parse_job(raw, f"{cfg.name}: trial {trial_id}")

"""A search's space in Optuna: ``SearchCfg.params`` as distributions (plus the enqueued zero arm), and the
finished trials as an Optuna study (its CSV and parameter importances)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ..config import ZERO_ARM, SearchCfg
from ..lam import LAM_KEY
from ..search_report import row_lam

log = logging.getLogger(__name__)


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


def study_summary(cfg: SearchCfg, rows: list[dict[str, Any]], folder: Path) -> list[str]:
    """An Optuna study rebuilt from the finished trials: ``optuna_study.csv``, Optuna's optimization history plot
    (``optuna_history.png``, from one finished trial) and parameter importances (``optuna_importances.json`` and
    Optuna's plot of them, .png, when at least two finished trials differ). Returns the files written."""
    import optuna

    space, _ = optuna_space(cfg)
    study = optuna.create_study(direction="maximize" if cfg.search.mode == "max" else "minimize")
    for r in rows:
        if r["state"] != "finished" or r["metric"] is None:
            continue
        values = {k: v for k, v in r["params"].items() if k in space}
        study.add_trial(optuna.trial.create_trial(
            params=values, distributions={k: space[k] for k in values}, value=float(r["metric"]),
            user_attrs={"tune_trial_id": r["trial_id"], LAM_KEY: row_lam(cfg, r)}))
    study.trials_dataframe().to_csv(folder / "optuna_study.csv", index=False)
    files = ["optuna_study.csv"]
    if study.trials:
        files += _optuna_plot("plot_optimization_history", study, folder / "optuna_history.png")
    values = {t.value for t in study.trials}
    if len(study.trials) >= 2 and len(values) > 1:
        try:
            imp = optuna.importance.get_param_importances(study)
            (folder / "optuna_importances.json").write_text(json.dumps(imp, indent=2))
            files.append("optuna_importances.json")
            files += _optuna_plot("plot_param_importances", study, folder / "optuna_importances.png")
        except (RuntimeError, ValueError) as e:  # degenerate studies (one distinct value per param ...)
            log.info("optuna importances skipped: %s", e)
    return files


def _optuna_plot(name: str, study, path: Path) -> list[str]:
    """Optuna's own matplotlib plot ``optuna.visualization.matplotlib.<name>`` of ``study`` into ``path``."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # Optuna marks its matplotlib backend experimental
        ax = getattr(ovm, name)(study)
    fig = ax.figure
    fig.set_size_inches(6.4, 3.6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path.name]

"""A search's space in Optuna: ``SearchCfg.params`` as distributions (plus the enqueued zero arm), and the
finished trials as an Optuna study (its CSV and parameter importances)."""

from __future__ import annotations

import json
import logging
import math
import warnings
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


STUDY_DB = "optuna.db"  # the Optuna study of the search's TPE sampler (``optuna-dashboard sqlite:///<storage>/optuna.db``)


def study_storage(cfg: SearchCfg) -> str:
    """The RDB storage URL of the search's Optuna study: a sqlite file in its storage folder (the study is named
    ``cfg.name``)."""
    return f"sqlite:///{(cfg.storage_dir / STUDY_DB).absolute()}"


def optuna_searcher(cfg: SearchCfg) -> tuple[dict[str, Any], Any]:
    """(the Optuna space, Ray Tune's ``OptunaSearch`` over it): TPE seeded by ``search.seed``; with
    ``search.objectives`` Optuna's multi-objective TPE, given the metrics and modes as lists. Its study stays in
    memory (see ``study_summary`` for the sqlite copy the dashboard opens)."""
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    space, points = optuna_space(cfg)
    targets = cfg.search.targets
    metric = [o.metric for o in targets] if cfg.search.multi else cfg.search.metric  # on searcher and scheduler:
    mode = [o.mode for o in targets] if cfg.search.multi else cfg.search.mode  # Tune's concurrency limiter does
    return space, OptunaSearch(space=space, points_to_evaluate=points or None,  # not pass TuneConfig's on
                               sampler=TPESampler(seed=cfg.search.seed), metric=metric, mode=mode)


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
    """The search's Optuna study, rebuilt from its trials into ``optuna.db`` in the storage folder (finished trials
    COMPLETE, ASHA-stopped ones PRUNED, under the search's name; replaced on every call, so a resumed search writes
    it whole again): what ``optuna-dashboard`` opens. Beside it ``optuna_study.csv``, Optuna's optimization history
    plot (``optuna_history.png``, from one finished trial; of the first objective in a multi-objective search) and
    parameter importances (``optuna_importances.json`` and Optuna's plot of them, .png, when at least two finished
    trials differ; of the first objective). Returns the files written into ``folder``.

    The TPE sampler itself keeps its study in memory (Tune pickles it with the experiment): a study in the sqlite
    file would run ahead of the pickled searcher when a driver is killed, and ``--resume`` would then tell Optuna
    a trial it had already finished."""
    import optuna

    space, _ = optuna_space(cfg)
    targets = cfg.search.targets
    cfg.storage_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(study_storage(cfg))
    if cfg.name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        optuna.delete_study(study_name=cfg.name, storage=storage)  # cmidd's own file: rebuilt from the trials
    study = optuna.create_study(storage=storage, study_name=cfg.name,
                                directions=["maximize" if o.mode == "max" else "minimize" for o in targets])
    complete = optuna.trial.TrialState.COMPLETE
    for r in rows:
        vals = [r["metric"]] if not cfg.search.multi else [(r.get("objectives") or {}).get(o.metric) for o in targets]
        values = {k: v for k, v in r["params"].items() if k in space}
        common = dict(params=values, distributions={k: space[k] for k in values},
                      user_attrs={"tune_trial_id": r["trial_id"], LAM_KEY: row_lam(cfg, r)})
        if r["state"] == "finished" and all(v is not None for v in vals):
            study.add_trial(optuna.trial.create_trial(values=[float(v) for v in vals], **common))
        elif r["state"] == "stopped":  # its last report as the intermediate value Optuna's dashboard plots
            last = {} if cfg.search.multi or r["metric"] is None else {int(r.get("step") or 0): float(r["metric"])}
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                                      intermediate_values=last, **common))
    done = study.get_trials(deepcopy=False, states=(complete,))
    study.trials_dataframe().to_csv(folder / "optuna_study.csv", index=False)
    files = ["optuna_study.csv"]
    # several objectives: the plots and importances are of the first one; the evaluator ranks for low target
    # values, so a max objective is negated there
    first_target = (lambda t: t.values[0]) if cfg.search.multi else None
    if done:
        files += _optuna_plot("plot_optimization_history", study, folder / "optuna_history.png", target=first_target,
                              target_name=targets[0].metric)
    first = {t.values[0] for t in done}
    if len(done) >= 2 and len(first) > 1:
        try:
            sign = 1.0 if targets[0].mode == "min" else -1.0
            target = (lambda t: sign * t.values[0]) if cfg.search.multi else None
            with warnings.catch_warnings():  # the target's sign is set above on purpose: its warning says nothing
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
                imp = optuna.importance.get_param_importances(study, target=target)
            (folder / "optuna_importances.json").write_text(json.dumps(imp, indent=2))
            files.append("optuna_importances.json")
            files += _optuna_plot("plot_param_importances", study, folder / "optuna_importances.png", target=target,
                                  target_name=targets[0].metric)
        except (RuntimeError, ValueError) as e:  # degenerate studies (one distinct value per param ...)
            log.info("optuna importances skipped: %s", e)
    return files


def _optuna_plot(name: str, study, path: Path, target=None, target_name: str = "Objective Value") -> list[str]:
    """Optuna's own matplotlib plot ``optuna.visualization.matplotlib.<name>`` of ``study`` into ``path`` (of
    ``target(trial)`` when given: a multi-objective study's plots need one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # Optuna marks its matplotlib backend experimental
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")  # a target's sign is set
        kw = {} if target is None else {"target": target, "target_name": target_name}
        ax = getattr(ovm, name)(study, **kw)
    fig = ax.figure
    fig.set_size_inches(6.4, 3.6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path.name]

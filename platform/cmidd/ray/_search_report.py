"""The end of a search: stopped runs marked, the top-k registered, the parent's summary, study and plots.

``finish`` runs in the driver after ``Tuner.fit()``, inside the parent run's lifecycle (``tracking.open_run``):
it raises ``KeyboardInterrupt`` when trials are unfinished (the parent ends KILLED; ``--resume`` continues) and
``CmiddError`` when no trial finished (the parent ends FAILED).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from ..config import ZERO_ARM, SearchCfg
from ..errors import CmiddError
from ..tracking import (
    end_run, ensure_experiment, log_metrics, log_params, metrics_at, set_tags,
)
from ._register import register_top
from ._space import TAG_STOPPED, TAG_TRIAL, optuna_space

log = logging.getLogger(__name__)


def finish(client, cfg: SearchCfg, parent: str, trials: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Mark stopped runs, register the top-k, log the summary to the parent (which the caller then ends).

    Raises:
        KeyboardInterrupt: some trials are unfinished (the search was interrupted).
        CmiddError: no trial finished.
    """
    exp_id = ensure_experiment(cfg.name, client=client)
    runs = {r.data.tags.get(TAG_TRIAL): r for r in client.search_runs(
        [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=10000)}
    interrupted = [t["trial_id"] for t in trials if t["status"] not in ("TERMINATED", "ERROR")]
    rows, stopped = [], []
    for t in trials:
        run = runs.get(t["trial_id"])
        state = "finished" if t["final"] else "error" if t["error"] else "pending" if t["trial_id"] in interrupted \
            else "stopped"
        if state == "stopped":
            stopped.append(t["trial_id"])
            if run is not None and run.data.tags.get(TAG_STOPPED) != "true":
                set_tags(client, run.info.run_id, {TAG_STOPPED: "true"})
                end_run(client, run.info.run_id, "KILLED")
        rows.append({
            "trial_id": t["trial_id"], "run_id": run.info.run_id if run is not None else None, "state": state,
            "step": t["last"].get("step"), "metric": t["last"].get(cfg.search.metric),
            "std": t["last"].get(cfg.search.metric.replace("acc/", "acc_std/", 1)),  # seed spread, if reported
            "params": {k: v for k, v in t["config"].items()},
        })
    known = {t["trial_id"] for t in trials}
    for trial_id, run in runs.items():  # a driver killed hard may leave runs of trials Tune never saved
        if trial_id not in known and run.info.status == "RUNNING" and not interrupted:
            set_tags(client, run.info.run_id, {"cmidd.search.orphaned": "true"})
            end_run(client, run.info.run_id, "KILLED")
    if interrupted:
        raise KeyboardInterrupt(f"search interrupted with {len(interrupted)} trial(s) unfinished; rerun with --resume")
    sign = 1 if cfg.search.mode == "max" else -1
    done = sorted((r for r in rows if r["state"] == "finished" and r["run_id"] and r["metric"] is not None),
                  key=lambda r: -sign * r["metric"])
    if not done:
        raise CmiddError(f"search {cfg.name}: no trial finished ({len(stopped)} stopped, "
                         f"{sum(r['state'] == 'error' for r in rows)} failed); see the child runs")
    registered = register_top(client, cfg, done[:cfg.register_top_k], parent)
    best = done[0]
    summary = {"parent_run_id": parent, "experiment": cfg.name, "trials": rows, "best": best,
               "registered": registered, "stopped": stopped, "wall_s": wall}
    _log_parent(client, cfg, parent, summary)
    return summary


def _log_parent(client, cfg: SearchCfg, parent: str, summary: dict[str, Any]) -> None:
    """The best config as params, counts and the best value as metrics, trials.json, study summary, plots."""
    best = summary["best"]
    params = {f"best.{k}": str(v) for k, v in best["params"].items()}
    params |= {"best.trial_id": best["trial_id"], "best.run_id": best["run_id"]}
    existing = client.get_run(parent).data.params
    log_params(client, parent, {k: v for k, v in params.items() if k not in existing})  # resume: logged once
    rows = summary["trials"]
    counts = {"trials/finished": sum(r["state"] == "finished" for r in rows), "trials/stopped": len(summary["stopped"]),
              "trials/failed": sum(r["state"] == "error" for r in rows), f"best/{cfg.search.metric}": best["metric"],
              "time/search_s": summary["wall_s"]}
    log_metrics(client, parent, metrics_at(0, counts))
    with tempfile.TemporaryDirectory(prefix="cmidd-search-") as tmp:
        folder = Path(tmp)
        (folder / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
        files = ["trials.json"]
        files += study_summary(cfg, rows, folder)
        try:
            files += plots(cfg, rows, folder)
        except Exception as e:  # plots are a convenience: never fail a finished search on them
            log.warning("search plots skipped: %s", e)
        for name in files:
            client.log_artifact(parent, str(folder / name))


def study_summary(cfg: SearchCfg, rows: list[dict[str, Any]], folder: Path) -> list[str]:
    """An Optuna study rebuilt from the finished trials: ``optuna_study.csv`` and parameter importances
    (``optuna_importances.json``, when at least two finished trials differ). Returns the files written."""
    import optuna

    space, _ = optuna_space(cfg)
    study = optuna.create_study(direction="maximize" if cfg.search.mode == "max" else "minimize")
    for r in rows:
        if r["state"] != "finished" or r["metric"] is None:
            continue
        values = {k: v for k, v in r["params"].items() if k in space}
        study.add_trial(optuna.trial.create_trial(
            params=values, distributions={k: space[k] for k in values}, value=float(r["metric"]),
            user_attrs={"tune_trial_id": r["trial_id"]}))
    study.trials_dataframe().to_csv(folder / "optuna_study.csv", index=False)
    files = ["optuna_study.csv"]
    values = {t.value for t in study.trials}
    if len(study.trials) >= 2 and len(values) > 1:
        try:
            imp = optuna.importance.get_param_importances(study)
            (folder / "optuna_importances.json").write_text(json.dumps(imp, indent=2))
            files.append("optuna_importances.json")
            files += _importance_plot(imp, folder)
        except (RuntimeError, ValueError) as e:  # degenerate studies (one distinct value per param ...)
            log.info("optuna importances skipped: %s", e)
    return files


def plots(cfg: SearchCfg, rows: list[dict[str, Any]], folder: Path) -> list[str]:
    """accuracy_vs_lambda.png (log x; lambda = 0 drawn at the left edge) and accuracy_vs_ipc.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["metric"] is not None and r["state"] in ("finished", "stopped")]
    files = []
    lams = [_lam(cfg, r["params"]) for r in done]
    if done:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        pos = [x for x in lams if x > 0]
        floor = min(pos) / 3 if pos else 1.0
        for state, marker in (("finished", "o"), ("stopped", "x")):
            pts = [(lam if lam > 0 else floor, r["metric"]) for lam, r in zip(lams, done) if r["state"] == state]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, label=state)
        ax.set_xscale("log")
        ax.set_xlabel("lambda (lambda = 0 at the left edge)")
        ax.set_ylabel(cfg.search.metric)
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "accuracy_vs_lambda.png", dpi=100)
        plt.close(fig)
        files.append("accuracy_vs_lambda.png")
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ipcs = [r["params"].get("ipc", cfg.base.ipc) for r in done]
        ax.scatter(ipcs, [r["metric"] for r in done])
        ax.set_xlabel("ipc")
        ax.set_ylabel(cfg.search.metric)
        fig.tight_layout()
        fig.savefig(folder / "accuracy_vs_ipc.png", dpi=100)
        plt.close(fig)
        files.append("accuracy_vs_ipc.png")
    return files


def _importance_plot(imp: dict[str, float], folder: Path) -> list[str]:
    """optuna_importances.png: a bar per searched parameter (fANOVA importances from Optuna)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.4 * len(imp)))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance (Optuna)")
    fig.tight_layout()
    fig.savefig(folder / "optuna_importances.png", dpi=100)
    plt.close(fig)
    return ["optuna_importances.png"]


def _lam(cfg: SearchCfg, params: dict[str, Any]) -> float:
    if params.get(ZERO_ARM) is False:
        return 0.0
    lam = params.get("cmi.lam", cfg.base.cmi.lam)
    return float(lam) if lam is not None and not math.isnan(float(lam)) else 0.0


def summary_table(summary: dict[str, Any], metric: str) -> str:
    """The final table: one line per trial (best first), with its state, step, metric, seed std and values."""
    rows = sorted(summary["trials"], key=lambda r: (r["metric"] is None, -(r["metric"] or 0.0)))
    keys = sorted({k for r in rows for k in r["params"]})
    head = ["trial", "state", "step", metric, "std", *keys]
    lines = [head]
    for r in rows:
        m, sd = ("" if r.get(k) is None else f"{r[k]:.4f}" for k in ("metric", "std"))
        vals = [_fmt(r["params"].get(k)) for k in keys]
        lines.append([r["trial_id"], r["state"], str(r["step"] if r["step"] is not None else ""), m, sd, *vals])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def zero_arm_verdict(summary: dict[str, Any], cfg: SearchCfg) -> str | None:
    """Whether the best finished trial with lambda > 0 beats the best with lambda = 0 (the zero arm), is worse, or
    is within their seed spreads added (``std``); None unless both arms finished."""
    done = [r for r in summary["trials"] if r["state"] == "finished" and r["metric"] is not None]
    zero = [r for r in done if _lam(cfg, r["params"]) == 0]
    cmi = [r for r in done if r not in zero]
    if not zero or not cmi:
        return None
    sign = 1.0 if cfg.search.mode == "max" else -1.0
    z, c = (max(arm, key=lambda r: sign * r["metric"]) for arm in (zero, cmi))
    gap, spread = c["metric"] - z["metric"], (z.get("std") or 0.0) + (c.get("std") or 0.0)
    verdict = ("beats lambda = 0 by more than" if sign * gap > spread else "is worse than lambda = 0 by more than"
               if sign * gap < -spread else "is within")
    return (f"zero arm: lambda = 0 {cfg.search.metric} {_pm(z)}; best lambda > 0 ({_fmt(_lam(cfg, c['params']))}) "
            f"{_pm(c)}: {gap:+.4f}, so lambda > 0 {verdict} the seed spread ({spread:.4f}, the two std added)")


def _pm(r: dict[str, Any]) -> str:
    return f"{r['metric']:.4f}" + ("" if r.get("std") is None else f" +- {r['std']:.4f}")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)

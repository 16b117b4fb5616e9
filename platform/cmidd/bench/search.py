"""``cmidd bench --suite search``: TPE + ASHA against a grid over the same lambda range, on digits.

Both arms run the same Tune function trial (``cmidd.app.SearchTrial``: distill + evaluate, tracked in a
throw-away MLflow store) on the same Ray, one trial at a time, so the only difference is which trials run
and for how long: the grid tries ``grid_points`` lambdas (0 and a log-spaced range) to the end; TPE samples
``num_samples`` (lambda log-uniform, the lambda = 0 arm enqueued, and lr_img) and ASHA stops the weak ones.
CPU-seconds = the sum of the trials' running times (one CPU each; Tune's actor start-up not counted).
Both tuners are ``cmidd.ray.tune.build_tuner``'s (the grid arm's with ``grid=``); this module imports no Ray.

Example:
    >>> r = search_vs_grid(iterations=20, num_samples=8, grid_points=6)
    >>> r["tpe_asha"]["best"], r["tpe_asha"]["cpu_s"], r["grid"]["best"], r["grid"]["cpu_s"]
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from ..config import JOBS_DIR, load_raw, load_search
from ..names import CROSS_ARCH_MEAN
from ..app import SearchTrial, open_store, run_search
from ..ray import connected, require
from ..ray.tune import TUNE_DIR, build_tuner, experiment_path, fit_tuner, read_trials

if TYPE_CHECKING:
    from . import BenchPlan

require("ray.tune", "optuna")  # ImportError without them: the suite is reported unavailable

METRIC = CROSS_ARCH_MEAN


def _space(folder: Path, ipc: int, iterations: int, eval_every: int, eval_epochs: int, lam_range: tuple[float, float],
           num_samples: int, grace: int, seed: int) -> Path:
    mapping = load_raw(JOBS_DIR / "bench" / "search.yaml", {
        "base.seed": seed, "base.ipc": ipc, "base.method.iterations": iterations, "base.eval.epochs": eval_epochs,
        "base.eval.every": eval_every, "base.output.dir": str(folder / "runs" / "trial"),
        "search.num_samples": num_samples, "search.seed": seed, "search.asha.grace_period": grace,
        "storage": str(folder / "tpe")})
    mapping["params"]["cmi.lam"]["loguniform"] = list(lam_range)  # a param's key is dotted itself
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return path


def best_so_far(trials: list[tuple[float, float | None]]) -> list[tuple[float, float]]:
    """(cumulative CPU-seconds, best accuracy so far) after each trial, in the order the trials ran."""
    out, spent, best = [], 0.0, -math.inf
    for seconds, acc in trials:
        spent += seconds
        if acc is not None:
            best = max(best, acc)
        out.append((spent, best))
    return out


def timeline(trials: list[dict[str, Any]]) -> list[tuple[float, float | None]]:
    """(running seconds, final accuracy or None if stopped) per trial (``cmidd.ray.tune.read_trials``), in the
    order the trials ended (Tune's ``date`` of each trial's last result)."""
    rows = sorted(((t["last"].get("date", ""), float(t["last"].get("time_total_s", 0.0)),
                    t["last"].get(METRIC) if t["final"] else None) for t in trials), key=lambda row: row[:2])
    return [(seconds, acc) for _, seconds, acc in rows]


def search_vs_grid(ipc: int = 10, iterations: int = 40, eval_every: int = 10, eval_epochs: int = 30,
                   lam_range: tuple[float, float] = (1.0, 1000.0), num_samples: int = 8, grid_points: int = 6,
                   grace: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Best accuracy vs CPU-seconds: TPE + ASHA (``num_samples``) against a grid of ``grid_points`` lambdas.

    Both arms run on a local 2-CPU Ray (or the running one), tracked in a throw-away MLflow store.

    Returns:
        {"settings", "tpe_asha": {"best", "cpu_s", "wall_s", "trials", "stopped", "curve"},
         "grid": {...same...}, "ratios": {"cpu_grid_over_tpe", "best_tpe_minus_grid"}}.
    """
    lo, hi = lam_range
    lams = [0.0] + [lo * (hi / lo) ** (i / max(grid_points - 2, 1)) for i in range(grid_points - 1)]
    with connected("local", num_cpus=2, include_dashboard=False), \
            tempfile.TemporaryDirectory(prefix="cmidd-bench-search-") as tmp:
        folder = Path(tmp)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        cfg = load_search(_space(folder, ipc, iterations, eval_every, eval_epochs, lam_range, num_samples,
                                 grace or eval_every, seed))
        tpe = _tpe_arm(cfg, uri)
        grid = _grid_arm(cfg, uri, lams, folder / "grid")
    r = {
        "settings": {"dataset": "digits", "ipc": ipc, "iterations": iterations, "eval_every": eval_every,
                     "eval_epochs": eval_epochs, "lam_range": list(lam_range), "num_samples": num_samples,
                     "grid_lams": lams, "seed": seed},
        "tpe_asha": tpe,
        "grid": grid,
    }
    r["ratios"] = {"cpu_grid_over_tpe": r["grid"]["cpu_s"] / max(r["tpe_asha"]["cpu_s"], 1e-9),
                   "best_tpe_minus_grid": r["tpe_asha"]["best"] - r["grid"]["best"]}
    return r


def _arm(trials: list[tuple[float, float | None]], wall: float, stopped: int) -> dict[str, Any]:
    curve = best_so_far(trials)
    return {"best": curve[-1][1], "cpu_s": curve[-1][0], "wall_s": wall, "trials": len(trials),
            "stopped": stopped, "curve": curve}


def _tpe_arm(cfg, uri: str) -> dict[str, Any]:
    """The search as ``cmidd search`` runs it: TPE samples, ASHA stops."""
    t0 = time.perf_counter()
    summary = run_search(cfg, uri, progress=False)
    wall = time.perf_counter() - t0
    return _arm(timeline(read_trials(experiment_path(cfg))), wall, len(summary["stopped"]))


def _grid_arm(cfg, uri: str, lams: list[float], grid_dir: Path) -> dict[str, Any]:
    """The same trial function over a lambda grid, every trial to the end, under one parent run."""
    with open_store(uri).parent_run(cfg.name, "grid", "search", cfg.base.data.name) as parent:  # FAILED on error
        t0 = time.perf_counter()
        fit_tuner(build_tuner(cfg, SearchTrial(uri, cfg.name, parent), grid={"cmi.lam": lams},
                              storage=grid_dir))  # stdout stays the report's
        wall = time.perf_counter() - t0
    return _arm(timeline(read_trials(grid_dir / TUNE_DIR)), wall, 0)


def table(r: dict[str, Any]) -> str:
    """The suite's Markdown table: trials, stopped, best accuracy and seconds of each arm."""
    t, g = r["tpe_asha"], r["grid"]
    return "\n".join([
        f"TPE+ASHA vs a lambda grid, digits IPC {r['settings']['ipc']}, {r['settings']['iterations']} iterations:",
        "", "| arm | trials | stopped | best acc | CPU-s | wall-s |", "|---|---:|---:|---:|---:|---:|",
        f"| TPE+ASHA | {t['trials']} | {t['stopped']} | {t['best']:.4f} | {t['cpu_s']:.1f} | {t['wall_s']:.1f} |",
        f"| grid | {g['trials']} | 0 | {g['best']:.4f} | {g['cpu_s']:.1f} | {g['wall_s']:.1f} |",
    ])


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """None: the search suite reports its comparison, it has no target."""
    return []


def suite(plan: BenchPlan, device: torch.device, out: Path) -> dict[str, Any]:
    """The ``search`` suite of ``cmidd bench`` (sizes from the plan; quick plans use fewer iterations)."""
    quick = plan.quality_iterations <= 100
    r = search_vs_grid(iterations=20 if quick else 100, eval_every=5 if quick else 25,
                       eval_epochs=20 if quick else 100, num_samples=6 if quick else 16,
                       grid_points=5 if quick else 9)
    r["table"] = table(r)
    return r

"""A search's report, from its summary rows alone (no Ray, Optuna or MLflow here): the table, the zero-arm
verdict, the accuracy-vs-lambda and -ipc plots.

A row (``cmidd.tracking.finish_search`` makes them) is ``{"trial_id", "run_id", "state", "step", "metric", "std",
"params", "lam_effective"}``; ``state`` is finished, stopped (by ASHA), error or pending.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .config import ZERO_ARM, SearchCfg
from .lam import fmt_lam, lam_of
from .names import CROSS_ARCH_MEAN
from .pareto import pareto_front
from .paired_test import MIN_GAIN, critical


def plots(cfg: SearchCfg, rows: list[dict[str, Any]], folder: Path) -> list[str]:
    """accuracy_vs_lambda.png (the effective lambda on a symlog axis, lambda = 0 labelled; each trial's mean +-
    its seed std) and accuracy_vs_ipc.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["metric"] is not None and r["state"] in ("finished", "stopped")]
    files = []
    if done:
        fig = lambda_figure(cfg, done)
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


def arch_rows(label: str, metrics: dict[str, float]) -> list[dict[str, Any]]:
    """``[{"set", "arch", "acc_mean", "acc_std"}]`` from a run's ``acc/<arch>`` and ``acc_std/<arch>`` metrics."""
    return [{"set": label, "arch": k[len("acc/"):], "acc_mean": v,
             "acc_std": metrics.get(f"acc_std/{k[len('acc/'):]}", 0.0)}
            for k, v in metrics.items() if k.startswith("acc/") and k not in (CROSS_ARCH_MEAN, "acc/ensemble")]


def lambda_figure(cfg: SearchCfg | None, rows: list[dict[str, Any]], metric: str | None = None):
    """The accuracy-vs-lambda figure: each trial at its effective lambda on a symlog axis (linear below the
    smallest lambda > 0, so lambda = 0 has a place, labelled ``0 (off)``), its mean +- seed std as an error bar,
    finished and stopped trials marked apart."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    lams = [row_lam(cfg, r) for r in rows]
    pos = [x for x in lams if x > 0]
    for state, marker in (("finished", "o"), ("stopped", "x")):
        pts = [(lam, r["metric"], r.get("std") or 0.0) for lam, r in zip(lams, rows)
               if r["state"] == state and not math.isnan(lam)]  # NaN: an alpha trial stopped before it reported
        if pts:
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, fmt=marker, capsize=3, label=f"{state} (mean +- seed std)")
    ax.set_xscale("symlog", linthresh=min(pos) if pos else 1.0)
    decades = range(math.floor(math.log10(min(pos))), math.ceil(math.log10(max(pos))) + 1) if pos else []
    ticks = sorted({0.0, *pos}) if len(pos) <= 5 else [0.0, *(10.0**k for k in decades)]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0\n(off)" if t == 0 else fmt_lam(t) for t in ticks])
    ax.set_xlim(left=-0.5 * (min(pos) if pos else 1.0))
    ax.set_xlabel("effective lambda (symlog)")
    ax.set_ylabel(metric or (cfg.search.metric if cfg is not None else "accuracy"))
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


RAW_LAMBDA = ("cmi.lam", ZERO_ARM)  # shown as the effective lambda instead (a zero arm's cmi.lam is not what ran)


def trial_lam(cfg: SearchCfg | None, params: dict[str, Any], reported: dict[str, Any] | None = None) -> float:
    """The lambda a trial ran (``cmidd.lam.lam_of``): 0 for ``cmi_on`` false or lambda = alpha = 0; the reported
    ``cmi.lam_effective`` (an alpha trial's calibrated one); else its or the base job's ``cmi.lam``."""
    base = {} if cfg is None else {"cmi.lam": cfg.base.cmi.lam, "cmi.alpha": cfg.base.cmi.alpha}
    return lam_of(params, reported, base)


def row_lam(cfg: SearchCfg | None, r: dict[str, Any]) -> float:
    """A summary row's effective lambda (``finish_search`` stores it; rows built elsewhere get it from their params)."""
    lam = r.get("lam_effective")
    return float(lam) if lam is not None else trial_lam(cfg, r["params"])


def summary_table(summary: dict[str, Any], metric: str, cfg: SearchCfg | None = None) -> str:
    """The final table: one line per trial (best first), with its state, step, metric, seed std, effective lambda
    (3 significant digits) and the other searched values."""
    rows = sorted(summary["trials"], key=lambda r: (r["metric"] is None, -(r["metric"] or 0.0)))
    keys = sorted({k for r in rows for k in r["params"] if k not in RAW_LAMBDA})
    head = ["trial", "state", "step", metric, "std", "lambda", *keys]
    lines = [head]
    for r in rows:
        m, sd = ("" if r.get(k) is None else f"{r[k]:.4f}" for k in ("metric", "std"))
        vals = [_fmt(r["params"].get(k)) for k in keys]
        lines.append([r["trial_id"], r["state"], str(r["step"] if r["step"] is not None else ""), m, sd,
                      fmt_lam(row_lam(cfg, r)), *vals])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def zero_arm_verdict(summary: dict[str, Any], cfg: SearchCfg) -> str:
    """Whether the best finished trial with lambda > 0 beats the best with lambda = 0 (the zero arm), is worse, or
    shows no detectable effect, by the rule of ``cmidd.study`` (2026-12-06) as far as a search allows, within the
    best lambda > 0 trial's stratum (its IPC and method when the search varies them: ``stratum``): the gap must
    be >= 0.5 pt (an ``acc/`` metric) and > c standard errors, the SE from the two trials' eval-seed spreads
    (``std``, a population std over ``eval.num_eval`` seeds), c the t quantile at one-sided 2.5% over the number of
    lambda > 0 trials the best was picked from (Bonferroni: the best of N is biased upward), 2(k - 1) degrees of
    freedom. One distillation per trial: the distillation seed's spread is not in the SE, so the line says so.
    When an arm has no finished trial, the line says so and why (none ran, or they were stopped early by ASHA /
    failed / pending)."""
    rows = summary["trials"]
    arm = {id(r): row_lam(cfg, r) == 0 for r in rows}
    done = [r for r in rows if r["state"] == "finished" and r["metric"] is not None]
    zero = [r for r in done if arm[id(r)]]
    cmi = [r for r in done if not arm[id(r)]]
    if not zero or not cmi:
        missing = [(name, is_zero) for name, is_zero, have in (("lambda = 0", True, zero), ("lambda > 0", False, cmi))
                   if not have]
        return "zero arm: cannot decide: " + "; ".join(
            f"no {name} trial finished ({_why([r for r in rows if arm[id(r)] == is_zero], is_zero)})"
            for name, is_zero in missing)
    sign = 1.0 if cfg.search.mode == "max" else -1.0
    c, picked = max(cmi, key=lambda r: sign * r["metric"]), len(cmi)  # the best of all lambda > 0 trials
    at = stratum(cfg, c)  # the arms compare only where the problem is the same (one IPC, one method)
    zero = [r for r in zero if stratum(cfg, r) == at]
    where = " at " + ", ".join(f"{k} {v}" for k, v in at) if at else ""
    if not zero:
        ran = sorted({", ".join(f"{k} {v}" for k, v in stratum(cfg, r)) for r in done if arm[id(r)]})
        return (f"zero arm: cannot decide: no lambda = 0 trial finished{where} (the best lambda > 0 trial's; "
                f"lambda = 0 finished at {'; '.join(ran)}): the arms compare at the same "
                f"{' and '.join(k for k, _ in at)} only")
    z = max(zero, key=lambda r: sign * r["metric"])
    gap = c["metric"] - z["metric"]
    head = (f"zero arm{where}: lambda = 0 {cfg.search.metric} {_pm(z)}; best lambda > 0 "
            f"({fmt_lam(row_lam(cfg, c))}) {_pm(c)}: {gap:+.4f}")
    k = {int(r["params"].get("eval.num_eval", cfg.base.eval.num_eval)) for r in (z, c)}
    if min(k) < 2:
        return f"{head}: cannot weigh it: one eval seed per trial, so no spread"
    se = math.sqrt(sum((r.get("std") or 0.0) ** 2 / (int(r["params"].get("eval.num_eval", min(k))) - 1)
                       for r in (z, c)))
    floor = MIN_GAIN if cfg.search.metric.startswith("acc/") else 0.0
    crit = critical(2 * min(k) - 1, picked)  # 2(k - 1) degrees of freedom
    how = (f"{'>= 0.5 pt and ' if floor else ''}> {crit:.2f} x SE {se:.4f}, eval seeds only (one distillation per "
           f"trial); best of {picked} lambda > 0 trial{'s' if picked != 1 else ''}, Bonferroni")
    if sign * gap >= floor and sign * gap > crit * se:
        return f"{head}, so lambda > 0 beats lambda = 0 ({how})"
    if -sign * gap >= floor and -sign * gap > crit * se:
        return f"{head}, so lambda > 0 is worse than lambda = 0 ({how})"
    x = max(floor, (crit + 0.84) * se)  # found with ~80% probability (SE taken as known)
    return f"{head}: no effect >= {x:.4f} detectable ({how})"


STRATA = ("ipc", "method.name")  # searched values that change the problem the arms solve


def stratum(cfg: SearchCfg, r: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The searched values of ``STRATA`` a row ran with (empty when the search varies none of them): the zero
    arm's verdict compares lambda = 0 with lambda > 0 at one IPC and one method only, since either moves the
    accuracy more than the CMI term does."""
    return tuple((k, r["params"].get(k)) for k in STRATA if k in cfg.params)


def _why(arm: list[dict[str, Any]], zero: bool) -> str:
    """Why an arm has no finished trial: what became of its trials, or that none ran (and why not)."""
    if not arm:
        if zero:
            return "none ran: the space has no zero_arm and the base job's CMI is on"
        return "none ran: CMI is off in every trial"
    states: dict[str, list[str]] = {}
    for r in arm:
        label = {"stopped": "stopped early by ASHA", "error": "failed", "pending": "unfinished"}.get(r["state"],
                                                                                                   r["state"])
        at = f" at step {r['step']}" if r["state"] == "stopped" and r.get("step") is not None else ""
        states.setdefault(label, []).append(f"{r['trial_id']}{at}")
    return "; ".join(f"{len(v)} {k}: {', '.join(v)}" for k, v in states.items())


def _pm(r: dict[str, Any]) -> str:
    return f"{r['metric']:.4f}" + ("" if r.get("std") is None else f" +- {r['std']:.4f}")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# -- a multi-objective search (search.objectives): its Pareto front ---------------------------------------------


def objective_values(cfg: SearchCfg, last: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's last report -> ({objective metric: value}, {metric: seed std}); the std of an ``acc/`` objective
    is its ``acc_std/`` (the spread over the evaluation seeds), None for the others."""
    vals = {o.metric: last.get(o.metric) for o in cfg.search.targets}
    stds = {m: last.get(m.replace("acc/", "acc_std/", 1)) if m.startswith("acc/") else None for m in vals}
    return vals, stds


def pareto_rows(cfg: SearchCfg, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished trials on the Pareto front of ``search.objectives`` (``cmidd.pareto``), best first on the first
    objective; a trial missing an objective's value takes no part."""
    targets = cfg.search.targets
    done = [r for r in rows if r["state"] == "finished"
            and all((r.get("objectives") or {}).get(o.metric) is not None for o in targets)]
    modes = [o.mode for o in targets]
    front = [done[i] for i in pareto_front([[r["objectives"][o.metric] for o in targets] for r in done], modes)]
    sign = 1.0 if targets[0].mode == "max" else -1.0
    return sorted(front, key=lambda r: (-sign * r["objectives"][targets[0].metric], r["trial_id"]))


def pareto_table(cfg: SearchCfg, front: list[dict[str, Any]]) -> str:
    """The front as a table: one line per trial, each objective (``+- seed std`` where reported), the effective
    lambda and the searched values."""
    targets = [o.metric for o in cfg.search.targets]
    keys = sorted({k for r in front for k in r["params"] if k not in RAW_LAMBDA and k not in targets})
    head = ["trial", *(f"{m} ({o.mode})" for m, o in zip(targets, cfg.search.targets)), "lambda", *keys]
    lines = [head]
    for r in front:
        cells = [fmt_objective(m, r["objectives"][m], (r.get("objective_std") or {}).get(m)) for m in targets]
        lines.append([r["trial_id"], *cells, fmt_lam(row_lam(cfg, r)), *(_fmt(r["params"].get(k)) for k in keys)])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def fmt_objective(metric: str, value: float, std: float | None = None) -> str:
    """An objective's value for tables: an accuracy (or any value with a seed std) to 4 decimals ``+- std``, a cost
    such as ``ipc`` or seconds to 4 significant digits."""
    if std is None and not metric.startswith("acc/"):
        return _fmt(float(value))
    return f"{value:.4f}" + ("" if std is None else f" +- {std:.4f}")


def pareto_plot(cfg: SearchCfg, rows: list[dict[str, Any]], front: list[dict[str, Any]], folder: Path) -> list[str]:
    """pareto.png: every finished trial on the first two objectives, the front joined and marked, each point's
    seed std as an error bar where reported."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (ya, yo), (xa, xo) = [(o.metric, o.mode) for o in cfg.search.targets[:2]]
    done = [r for r in rows if r["state"] == "finished" and r.get("objectives")
            and None not in (r["objectives"].get(ya), r["objectives"].get(xa))]
    if not done:
        return []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for pts, style, label in ((done, dict(fmt="o", color="0.7"), "trial"),
                              (sorted(front, key=lambda r: r["objectives"][xa]), dict(fmt="-o", color="C0"),
                               "Pareto front (mean +- seed std)")):
        ax.errorbar([r["objectives"][xa] for r in pts], [r["objectives"][ya] for r in pts],
                    yerr=[(r.get("objective_std") or {}).get(ya) or 0.0 for r in pts],
                    xerr=[(r.get("objective_std") or {}).get(xa) or 0.0 for r in pts], capsize=3, label=label,
                    **style)
    ax.set_xlabel(f"{xa} ({xo})")
    ax.set_ylabel(f"{ya} ({yo})")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(folder / "pareto.png", dpi=100)
    plt.close(fig)
    return ["pareto.png"]

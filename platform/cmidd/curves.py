"""A distillation's curves, for people and for strict JSON readers.

``curves.png``: the losses (L_DD and the total) and the CMI at every iteration, and the test accuracy of each
evaluation architecture at each evaluation (``eval.every``) and at the end, mean +- seed std.
``strict``: a JSON-ready copy with non-finite floats as ``null`` (bare ``NaN`` is not JSON).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .names import CROSS_ARCH_MEAN


def strict(v: Any) -> Any:
    """``v`` with every non-finite float replaced by None, recursively (dicts, lists, tuples)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [strict(x) for x in v]
    return v


def accuracy_points(evals: list[dict[str, float]], final_step: int, final: dict[str, float]) -> dict[str, list]:
    """``{arch: [(step, acc %, std %), ...]}`` from the evaluations during the run and the final one."""
    out: dict[str, list] = {}
    for e in [*evals, {"step": final_step, **final}]:
        for key, acc in e.items():
            if key.startswith("acc/") and key != CROSS_ARCH_MEAN and math.isfinite(acc):
                arch = key[len("acc/"):]
                std = e.get(f"acc_std/{arch}", 0.0)
                out.setdefault(arch, []).append((e["step"], 100 * acc, 100 * std if math.isfinite(std) else 0.0))
    return out


def draw_curves(history, final: dict[str, float], path: str | Path, title: str = "") -> Path:
    """Write ``curves.png`` of a ``cmidd.distill.History`` and the final evaluation's metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(history.step, history.loss_dd, label="L_DD")
    if any(math.isfinite(c) for c in history.cmi):
        ax.plot(history.step, history.loss_total, label="L_DD + lambda CMI", alpha=0.8)
    ax.set(xlabel="iteration", ylabel="loss", yscale="log", title="losses")
    ax.legend(fontsize=8)
    ax = axes[1]
    cmi = [(s, c) for s, c in zip(history.step, history.cmi) if math.isfinite(c)]
    if cmi:
        ax.plot(*zip(*cmi), color="tab:green")
        ax.set(title="CMI of the synthetic set")
    else:
        ax.text(0.5, 0.5, "no CMI term (lambda = 0)", ha="center", va="center", transform=ax.transAxes)
        ax.set(title="CMI")
    ax.set(xlabel="iteration")
    ax = axes[2]
    final_step = history.step[-1] if history.step else 0
    for arch, pts in accuracy_points(history.evals, final_step, final).items():
        steps, acc, std = zip(*pts)
        ax.errorbar(steps, acc, yerr=std, marker="o", capsize=3, label=arch)
    ax.set(xlabel="iteration", ylabel="test accuracy % (mean +- seed std)", title="evaluation")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_comparison(rows: list[dict[str, Any]], path: str | Path, title: str = "", baseline: str = "random-real",
                    ensemble: str = "ensemble") -> Path:
    """Sets x architectures: test accuracy % as bars with seed-std error bars; the baseline's bars hatched and its
    accuracy per architecture drawn as a dashed line across the group (rows: set, arch, acc_mean, acc_std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["arch"] != ensemble]
    sets = list(dict.fromkeys(r["set"] for r in rows))
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    cell = {(r["set"], r["arch"]): r for r in rows}
    width = 0.8 / max(1, len(sets))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(archs) * max(1, len(sets)) / 2, 3.8))
    for i, s in enumerate(sets):
        xs = [a + (i - (len(sets) - 1) / 2) * width for a in range(len(archs))]
        acc = [100 * cell[s, a]["acc_mean"] if (s, a) in cell else math.nan for a in archs]
        std = [100 * cell[s, a]["acc_std"] if (s, a) in cell else 0.0 for a in archs]
        ax.bar(xs, acc, width, yerr=std, capsize=3, label=s, hatch="//" if s == baseline else None,
               edgecolor="black" if s == baseline else None, alpha=0.85)
        if s == baseline:
            for a, v in enumerate(acc):
                if math.isfinite(v):
                    ax.hlines(v, a - 0.45, a + 0.45, colors="black", linestyles="dashed", linewidth=1)
    finite = [100 * r["acc_mean"] for r in rows if math.isfinite(r["acc_mean"])]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 10), min(100.0, max(finite) + 5))
    ax.set_xticks(range(len(archs)), archs)
    import textwrap

    # wrapped to the figure's width (about 9 characters an inch at the title's size): a long title is never clipped
    ax.set(ylabel="test accuracy % (mean +- seed std)",
           title=textwrap.fill(title or "sets x architectures", max(20, int(fig.get_figwidth() * 9))))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

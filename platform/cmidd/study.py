"""The CMI study's report: per arm (alpha), accuracy at each checkpoint over its runs, and the verdict by the rule
stated before the run (issue 26; ``jobs/study_cmi_digits_ipc10.yaml``).

Each run is a ``cmidd run`` output folder (``result.json``, ``history.json``, ``synthetic/manifest.json``); an
arm is the runs of one ``cmi.alpha`` (0 = the zero arm), over distillation seeds. At checkpoint ``t`` an arm's
accuracy is the mean over its runs of each run's mean over eval seeds; its variance is the mean of the runs'
eval-seed variances plus the variance of the run means across distillation seeds (the variance of all its
accuracies pooled). The pooled seed std of two arms at ``t`` is ``sqrt((var_a + var_0) / 2)``.

Decision rule: CMI helps if some alpha > 0 beats the zero arm by more than twice the pooled seed std at some
checkpoint, or reaches the zero arm's final accuracy in half the iterations (at a checkpoint <= half).
Otherwise it does not help; it hurts if every alpha > 0 is below the zero arm by more than twice the pooled std
at the final checkpoint.

Example:
    >>> runs = load_runs(Path("runs/study-cmi-digits"))
    >>> arms = arm_curves(runs)
    >>> helps, line = verdict(arms, iterations=2000)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .lam import LAM_KEY, RATIO_KEY, fmt_lam
from .names import CROSS_ARCH_MEAN as METRIC


@dataclass(frozen=True)
class StudyRun:
    """One distillation of the study: its alpha, seed, effective lambda, accuracy curve and CMI ratio."""

    folder: Path
    alpha: float
    seed: int
    lam: float
    iterations: int
    curve: dict[int, tuple[float, float]]  # step -> (mean, std) over eval seeds; the last step from result.json
    cmi_ratio: float | None


@dataclass(frozen=True)
class Point:
    """An arm at one checkpoint: mean and pooled variance over its runs' eval seeds, and how many runs."""

    mean: float
    var: float
    runs: int


def load_runs(root: Path, metric: str = METRIC) -> list[StudyRun]:
    """Every finished run folder under ``root`` (one holding ``result.json``), sorted by (alpha, seed)."""
    out = []
    for result in sorted(Path(root).glob("*/result.json")):
        folder = result.parent
        res = json.loads(result.read_text())
        meta = json.loads((folder / "synthetic" / "manifest.json").read_text())
        cfg = meta["config"]
        hist = json.loads((folder / "history.json").read_text())
        std_key = metric.replace("acc/", "acc_std/", 1)
        curve = {int(e["step"]): (float(e[metric]), float(e.get(std_key, 0.0))) for e in hist["evals"]}
        last = int(hist["step"][-1]) if hist["step"] else int(cfg["method"]["iterations"])
        m = res["metrics"]
        curve[last] = (float(m[metric]), float(m.get(std_key, 0.0)))
        out.append(StudyRun(folder, float(cfg["cmi"]["alpha"]), int(cfg["seed"]), float(m.get(LAM_KEY, 0.0)),
                            int(cfg["method"]["iterations"]), dict(sorted(curve.items())), m.get(RATIO_KEY)))
    return sorted(out, key=lambda r: (r.alpha, r.seed))


def arm_curves(runs: list[StudyRun]) -> dict[float, dict[int, Point]]:
    """alpha -> step -> Point over the arm's runs that reached that step (pooled variance, see the module)."""
    arms: dict[float, dict[int, Point]] = {}
    for alpha in sorted({r.alpha for r in runs}):
        mine = [r for r in runs if r.alpha == alpha]
        steps = sorted({s for r in mine for s in r.curve})
        arms[alpha] = {}
        for s in steps:
            pts = [r.curve[s] for r in mine if s in r.curve]
            means = [p[0] for p in pts]
            mean = sum(means) / len(means)
            var = sum(p[1] ** 2 for p in pts) / len(pts) + sum((x - mean) ** 2 for x in means) / len(means)
            arms[alpha][s] = Point(mean, var, len(pts))
    return arms


def pooled_std(a: Point, b: Point) -> float:
    """The pooled seed std of two arms at one checkpoint: ``sqrt((var_a + var_b) / 2)``."""
    return math.sqrt((a.var + b.var) / 2)


def verdict(arms: dict[float, dict[int, Point]], iterations: int) -> tuple[bool | None, str]:
    """The decision rule (module docstring) applied: (helps, one line with the numbers); None = cannot decide."""
    if 0.0 not in arms or not arms[0.0]:
        return None, "cannot decide: the zero arm (alpha = 0) has no finished run"
    zero = arms[0.0]
    final_step = max(zero)
    z_final = zero[final_step].mean
    others = {a: c for a, c in arms.items() if a > 0}
    if not others:
        return None, "cannot decide: no arm with alpha > 0 finished"
    wins, fast, worst_final = [], [], []
    for a, curve in others.items():
        for s, p in curve.items():
            if s in zero:
                pooled = pooled_std(p, zero[s])
                gap = p.mean - zero[s].mean
                if gap > 2 * pooled:
                    wins.append((gap, a, s, pooled))
                if s == final_step:
                    worst_final.append(gap < -2 * pooled)
            if s <= iterations / 2 and p.mean >= z_final:
                fast.append((s, a, p.mean))
    if wins:
        gap, a, s, pooled = max(wins)
        return True, (f"CMI helps: alpha {a:g} beats the zero arm by {100 * gap:+.2f} pt at iteration {s} "
                      f"(> 2 x pooled seed std {100 * pooled:.2f} pt)")
    if fast:
        s, a, acc = min(fast)
        return True, (f"CMI helps: alpha {a:g} reaches the zero arm's final accuracy ({100 * z_final:.2f}%) at "
                      f"iteration {s} <= {iterations // 2} ({100 * acc:.2f}%)")
    best = max(others, key=lambda a: others[a][max(others[a])].mean)
    b = others[best][max(others[best])]
    hurt = bool(worst_final) and all(worst_final)
    return False, (f"CMI does not help{' (it hurts)' if hurt else ''}: no alpha > 0 beats the zero arm by more than "
                   f"2 x the pooled seed std at any checkpoint, nor reaches its final {100 * z_final:.2f}% by "
                   f"iteration {iterations // 2}; best alpha {best:g} ends at {100 * b.mean:.2f}%")


def clauses(arms: dict[float, dict[int, Point]], iterations: int) -> list[str]:
    """Each clause of the rule with its numbers, to read beside the verdict (the verdict is the rule's, unchanged):
    the largest gain of an alpha > 0 over the zero arm against 2 x the pooled std there, and the first checkpoint
    at which each arm, the zero arm included, reaches the zero arm's final accuracy (if the zero arm itself does so
    by half the iterations, the speed clause cannot tell a faster arm from seed noise)."""
    if 0.0 not in arms or not arms[0.0] or not any(a > 0 for a in arms):
        return []
    zero = arms[0.0]
    z_final = zero[max(zero)].mean
    gaps = [(p.mean - zero[s].mean, a, s, pooled_std(p, zero[s]))
            for a, c in arms.items() if a > 0 for s, p in c.items() if s in zero]
    gap, a, s, pooled = max(gaps)
    out = [f"gain clause: largest gain {100 * gap:+.2f} pt (alpha {a:g}, iteration {s}) vs 2 x pooled std "
           f"{200 * pooled:.2f} pt: {'met' if gap > 2 * pooled else 'not met'}"]
    first = {a: min((s for s, p in c.items() if p.mean >= z_final), default=None) for a, c in arms.items()}
    reach = ", ".join(f"alpha {a:g} at {'never' if t is None else t}" for a, t in first.items())
    out.append(f"speed clause: first checkpoint at or above the zero arm's final {100 * z_final:.2f}%: {reach} "
               f"(half the iterations: {iterations // 2})")
    return out


def table_md(runs: list[StudyRun], arms: dict[float, dict[int, Point]]) -> str:
    """A Markdown table: one row per arm, accuracy (mean +- pooled std, n runs) at each checkpoint, the
    effective lambdas and CMI ratios of its runs."""
    steps = sorted({s for c in arms.values() for s in c})
    head = ["alpha", "seeds", "lambda_eff", "cmi_ratio", *(f"acc @ {s}" for s in steps)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, curve in arms.items():
        mine = [r for r in runs if r.alpha == a]
        cells = [f"{a:g}", ",".join(str(r.seed) for r in mine), " / ".join(fmt_lam(r.lam) for r in mine),
                 " / ".join("-" if r.cmi_ratio is None else f"{r.cmi_ratio:.3g}" for r in mine)]
        for s in steps:
            p = curve.get(s)
            cells.append("-" if p is None else f"{100 * p.mean:.2f} +- {100 * math.sqrt(p.var):.2f} (n={p.runs})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(arms: dict[float, dict[int, Point]], path: Path, metric: str = METRIC) -> Path:
    """accuracy vs iteration, one line per arm, mean +- pooled std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for a, curve in arms.items():
        steps = sorted(curve)
        ax.errorbar(steps, [100 * curve[s].mean for s in steps], yerr=[100 * math.sqrt(curve[s].var) for s in steps],
                    marker="o", capsize=3, label="alpha 0 (plain DM)" if a == 0 else f"alpha {a:g}")
    ax.set_xlabel("DM iterations")
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(root: Path, out: Path | None = None) -> dict[str, Any]:
    """Load the runs under ``root``; write ``study.md`` (table + verdict) and ``study.png`` into ``out`` (default
    ``root``). Returns {"helps", "verdict", "table", "files"}."""
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(Path(root))
    if not runs:
        return {"helps": None, "verdict": f"cannot decide: no finished run under {root}", "table": "", "files": []}
    arms = arm_curves(runs)
    iterations = max(r.iterations for r in runs)
    helps, line = verdict(arms, iterations)
    table = table_md(runs, arms)
    detail = "".join(f"\n- {c}" for c in clauses(arms, iterations))
    (out / "study.md").write_text(f"{table}\n\nVerdict (the rule as stated before the run): {line}\n{detail}\n")
    files = [out / "study.md", plot(arms, out / "study.png")]
    return {"helps": helps, "verdict": line, "table": table, "files": [str(f) for f in files]}

"""The CMI study's report: per arm (alpha), accuracy at each checkpoint over its runs, and the verdict by the rule
stated before the run (issue 26; ``jobs/study_cmi_digits_ipc10.yaml``).

Each run is a ``cmidd run`` output folder (``result.json``, ``history.json``, ``synthetic/manifest.json``); an
arm is the runs of one ``cmi.alpha`` (0 = the zero arm), over distillation seeds. At checkpoint ``t`` an arm's
accuracy is the mean over its runs of each run's mean over eval seeds; its variance is the mean of the runs'
eval-seed variances plus the variance of the run means across distillation seeds (the variance of all its
accuracies pooled; the table's +- is its square root).

Decision rule (2026-12-06, replacing issue 26's, which said "helps" on 73-83% of simulated null studies;
``cmidd.study_sim``): an alpha > 0 and the zero arm are compared paired by distillation seed. A gain counts only
as a mean paired difference >= 0.5 pt, positive in every seed and > c standard errors (``Paired.gain``; c the
t quantile at one-sided 2.5% over the number of tests, Bonferroni, at least 2: ``critical``); the speed clause
(reaching the zero arm's final accuracy by half the iterations) counts only where the zero arm has not yet
reached it and the lead there passes the same test. It hurts if every alpha > 0 fails the mirrored test
at the final checkpoint. Otherwise "no effect >= X pt detectable", X the true gain the test would find with 80%
probability at the paired seed spread (``detectable``).

Example:
    >>> runs = load_runs(Path("runs/study-cmi-digits"))
    >>> helps, line = verdict(runs, iterations=2000)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .lam import LAM_KEY, RATIO_KEY, fmt_lam
from .names import CROSS_ARCH_MEAN as METRIC
from .paired_test import MIN_GAIN, POWER, critical, detectable, gain_test


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
    calib: tuple[dict[str, float], ...] = ()  # history.json "calib": CMI's measured pull along the run


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
                            int(cfg["method"]["iterations"]), dict(sorted(curve.items())), m.get(RATIO_KEY),
                            tuple(hist.get("calib", ()))))
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


@dataclass(frozen=True)
class Paired:
    """An alpha arm against the zero arm at one checkpoint, paired by distillation seed: the differences
    (alpha minus zero, one per seed both arms ran to that step), their mean and standard error
    (sample std / sqrt(n); None below 2 seeds)."""

    alpha: float
    step: int
    seeds: tuple[int, ...]
    diffs: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return sum(self.diffs) / self.n

    @property
    def se(self) -> float | None:
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((d - m) ** 2 for d in self.diffs) / (self.n - 1) / self.n)

    def gain(self, tests: int = 1) -> bool:
        """The gain test: mean >= MIN_GAIN, positive in every seed, mean > ``critical(n, tests)`` x SE (needs 2
        seeds); ``tests``: how many such tests the verdict looks at."""
        return gain_test(self.diffs, tests)

    def loss(self, tests: int = 1) -> bool:
        """The same test mirrored (a loss of >= MIN_GAIN, negative in every seed, beyond the critical SEs)."""
        return gain_test(tuple(-d for d in self.diffs), tests)

    def text(self) -> str:
        each = " / ".join(f"{100 * d:+.2f}" for d in self.diffs)
        se = "n/a" if self.se is None else f"{100 * self.se:.2f} pt"
        return f"{100 * self.mean:+.2f} pt (seeds {','.join(map(str, self.seeds))}: {each}; SE {se})"


def paired(runs: list[StudyRun]) -> list[Paired]:
    """Every (alpha > 0, checkpoint) with the zero arm's runs of the same seeds at that checkpoint."""
    zero = {r.seed: r for r in runs if r.alpha == 0}
    out = []
    for a in sorted({r.alpha for r in runs if r.alpha > 0}):
        mine = {r.seed: r for r in runs if r.alpha == a}
        for s in sorted({s for r in mine.values() for s in r.curve}):
            seeds = tuple(k for k in sorted(mine) if k in zero and s in mine[k].curve and s in zero[k].curve)
            if seeds:
                out.append(Paired(a, s, seeds, tuple(mine[k].curve[s][0] - zero[k].curve[s][0] for k in seeds)))
    return out


def spread(tests: list[Paired]) -> tuple[float, int] | None:
    """The seed spread of the paired differences: the std pooled over the checkpoints of the alpha arm with the
    most paired seeds (mean of the per-checkpoint sample variances), and that number of seeds; None when no
    checkpoint pairs 2 seeds."""
    have = [t for t in tests if t.n >= 2]
    if not have:
        return None
    n = max(t.n for t in have)
    best = [t for t in have if t.n == n]
    alpha = min(best, key=lambda t: t.alpha).alpha
    mine = [t for t in best if t.alpha == alpha]
    return math.sqrt(sum(t.se**2 * t.n for t in mine) / len(mine)), n


def verdict(runs: list[StudyRun], iterations: int, detect: bool = True) -> tuple[bool | None, str]:
    """The decision rule (``docs/cmi.md``, 2026-12-06) on the runs: (helps, one line with the numbers);
    None = cannot decide. A gain counts only as a mean paired-by-seed difference >= 0.5 pt, positive in every
    seed and > 2 standard errors (``Paired.gain``); the speed clause (reaching the zero arm's final accuracy by
    half the iterations) counts only at a checkpoint where the zero arm is still below that accuracy and the lead
    there passes the same test. Hurts: every alpha > 0 fails the mirrored test at the final checkpoint. Else
    "does not help: no effect >= X pt detectable", X from the seed spread (``detectable``; ``detect`` False
    leaves X out of the line, for simulations: the decision does not depend on it)."""
    arms = arm_curves(runs)
    if 0.0 not in arms or not arms[0.0]:
        return None, "cannot decide: the zero arm (alpha = 0) has no finished run"
    if not any(a > 0 for a in arms):
        return None, "cannot decide: no arm with alpha > 0 finished"
    zero = arms[0.0]
    target = zero[max(zero)].mean
    tests = paired(runs)
    if not any(t.n >= 2 for t in tests):
        return None, ("cannot decide: no alpha > 0 arm shares 2 distillation seeds with the zero arm at any "
                      "checkpoint (the gain test needs a standard error)")
    m = sum(t.n >= 2 for t in tests)  # the tests the verdict looks at (Bonferroni)
    wins = [t for t in tests if t.gain(m)]
    if wins:
        best = max(wins, key=lambda t: t.mean)
        line = (f"CMI helps: alpha {best.alpha:g} is ahead of the zero arm by {best.text()} at iteration "
                f"{best.step}: >= {100 * MIN_GAIN:.1f} pt, positive in every seed, > {critical(best.n, m):.2f} SE "
                f"({m} tests)")
        fast = [t for t in wins if t.step <= iterations / 2 and arms[t.alpha][t.step].mean >= target
                and zero[t.step].mean < target]
        if fast:
            t = min(fast, key=lambda t: t.step)
            line += (f"; and faster: at iteration {t.step} <= {iterations // 2} it is at "
                     f"{100 * arms[t.alpha][t.step].mean:.2f}%, the zero arm's final {100 * target:.2f}%, where "
                     f"the zero arm is at {100 * zero[t.step].mean:.2f}%")
        return True, line
    final = [t for t in tests if t.step == max(zero) and t.n >= 2]
    alphas = {a for a in arms if a > 0}
    if final and {t.alpha for t in final} == alphas and all(t.loss(len(final)) for t in final):
        worst = min(final, key=lambda t: t.mean)
        return False, (f"CMI hurts: at the final iteration {worst.step} every alpha > 0 is behind the zero arm "
                       f"beyond the gain test mirrored (alpha {worst.alpha:g}: {worst.text()})")
    best = max((t for t in tests if t.n >= 2), key=lambda t: t.mean)
    tail = f"largest paired difference alpha {best.alpha:g} at iteration {best.step}: {best.text()}"
    if not detect:
        return False, f"CMI does not help; {tail}"
    sd, n = spread(tests)
    return False, (f"CMI does not help: no effect >= {100 * detectable(sd, n, m):.2f} pt detectable (the true "
                   f"gain this design finds at one checkpoint with {POWER:.0%} probability: paired seed spread "
                   f"{100 * sd:.2f} pt over {n} seeds, {m} tests); {tail}")


def clauses(runs: list[StudyRun], iterations: int) -> list[str]:
    """Each clause of the rule with its numbers, to read beside the verdict: the paired gain test at every
    (alpha > 0, checkpoint), and the first checkpoint at which each arm, the zero arm included, reaches the zero
    arm's final accuracy (the speed clause counts only where the zero arm has not)."""
    arms = arm_curves(runs)
    if 0.0 not in arms or not arms[0.0] or not any(a > 0 for a in arms):
        return []
    zero = arms[0.0]
    z_final = zero[max(zero)].mean
    tests = paired(runs)
    m = sum(t.n >= 2 for t in tests)
    out = [f"gain test, alpha {t.alpha:g} at {t.step}: {t.text()} vs >= {100 * MIN_GAIN:.1f} pt, every seed > 0, > "
           f"{'n/a' if t.n < 2 else format(critical(t.n, m), '.2f')} SE: {'passes' if t.gain(m) else 'fails'}"
           for t in tests]
    first = {a: min((s for s, p in c.items() if p.mean >= z_final), default=None) for a, c in arms.items()}
    reach = ", ".join(f"alpha {a:g} at {'never' if t is None else t}" for a, t in first.items())
    out.append(f"speed clause: first checkpoint at or above the zero arm's final {100 * z_final:.2f}%: {reach} "
               f"(half the iterations: {iterations // 2}; counts only where the zero arm is below it and the gain "
               f"test passes)")
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


def calib_md(runs: list[StudyRun], steps: tuple[int, ...] = (0, 25, 100, 250, 500)) -> str:
    """alpha along the run: per run with measurements (``cmi.measure_every``), the realised alpha
    ``lam * g_CMI / g_DD`` at the measurement at or just before each of ``steps`` and at the last, with g_DD,
    g_CMI and lambda at the first and last ("" when no run measured)."""
    have = [r for r in runs if r.calib]
    if not have:
        return ""
    last = max(int(c["step"]) for r in have for c in r.calib)
    cols = sorted({*(s for s in steps if s < last), last})
    head = ["run", *(f"alpha_real @ {s}" for s in cols), "g_DD first -> last", "g_CMI first -> last",
            "lambda first -> last"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in have:
        cal = sorted(r.calib, key=lambda c: c["step"])
        at = [max((c for c in cal if c["step"] <= s), key=lambda c: c["step"], default=None) for s in cols]
        first, end = cal[0], cal[-1]
        lines.append("| " + " | ".join([f"alpha {r.alpha:g}, seed {r.seed}",
                                        *("-" if c is None else f"{c['alpha_realised']:.3g}" for c in at),
                                        f"{first['g_dd']:.3g} -> {end['g_dd']:.3g}",
                                        f"{first['g_cmi']:.3g} -> {end['g_cmi']:.3g}",
                                        f"{first['lam']:.3g} -> {end['lam']:.3g}"]) + " |")
    return "\n".join(lines)


def precondition(runs: list[StudyRun], min_ratio: float) -> tuple[bool | None, str]:
    """Whether CMI had something to fix: the zero arm's mean cmi_ratio over its runs > ``min_ratio`` (None: not
    measured)."""
    ratios = [r.cmi_ratio for r in runs if r.alpha == 0 and r.cmi_ratio is not None]
    if not ratios:
        return None, f"precondition (zero arm's cmi_ratio > {min_ratio:g}): not measured"
    mean = sum(ratios) / len(ratios)
    each = " / ".join(f"{x:.3f}" for x in ratios)
    met = mean > min_ratio
    return met, (f"precondition (zero arm's cmi_ratio > {min_ratio:g}): {'met' if met else 'NOT met'}, mean "
                 f"{mean:.3f} ({each})")


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


def report(root: Path, out: Path | None = None, min_ratio: float | None = None) -> dict[str, Any]:
    """Load the runs under ``root``; write ``study.md`` (table + verdict, alpha along the run when measured) and
    ``study.png`` into ``out`` (default ``root``). With ``min_ratio``, the precondition first: when the zero arm's
    cmi_ratio is not above it, the verdict is that CMI had nothing to fix (the accuracies are not a test of CMI).
    Returns {"helps", "verdict", "table", "files"}."""
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(Path(root))
    if not runs:
        return {"helps": None, "verdict": f"cannot decide: no finished run under {root}", "table": "", "files": []}
    arms = arm_curves(runs)
    iterations = max(r.iterations for r in runs)
    helps, line = verdict(runs, iterations)
    pre = ""
    if min_ratio is not None:
        met, pre = precondition(runs, min_ratio)
        if met is False:
            helps, line = None, f"CMI had nothing to fix ({pre}); by the rule the accuracies would say: {line}"
        pre = f"{pre}\n\n"
    table = table_md(runs, arms)
    detail = "".join(f"\n- {c}" for c in clauses(runs, iterations))
    calib = calib_md(runs)
    calib = f"\nalpha along the run (realised alpha = lam * g_CMI / g_DD, history.json calib):\n\n{calib}\n" if calib else ""
    (out / "study.md").write_text(f"{table}\n\n{pre}Verdict (the rule of 2026-12-06, docs/cmi.md): {line}\n{detail}\n"
                                  f"{calib}")
    files = [out / "study.md", plot(arms, out / "study.png")]
    return {"helps": helps, "verdict": line, "table": table, "files": [str(f) for f in files]}

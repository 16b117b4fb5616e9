"""How often does a study verdict say "CMI helps" when CMI does nothing? (issue 34; ``cmidd.study_sim``)

    python tools/study_null_sim.py [--repeats 2000] [--seed 0] [--old path/to/old/study.py] [--flat-2se]

Prints, per design (the 2026-12-05 digits study, the 2026-12-06 noise-init experiment), per noise scale (the
digits study's spreads x 0.5 / 1 / 2 / 4) and per curve shape (flat, still rising 1 pt over the run), the false
"helps" rate of ``cmidd.study.verdict`` and, with ``--old``, of the ``verdict(arm_curves(runs), iterations)`` of
another copy of ``study.py`` (e.g. the rule before 2026-12-06: ``git show 6e5d7ce:platform/cmidd/study.py``),
and with ``--flat-2se`` of the new rule with a flat 2 standard errors (no t quantile, no Bonferroni: issue 34's
first wording).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from cmidd import paired_test, study  # noqa: E402
from cmidd.study_sim import DESIGNS, Noise, false_help_rate  # noqa: E402


def _old_verdict(path: Path):
    name = "cmidd._study_old"  # a submodule of cmidd, so that its relative imports resolve
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return lambda runs, iterations: mod.verdict(mod.arm_curves(runs), iterations)


def _flat(rule, design, noise, repeats: int, seed: int) -> float:
    """The rate with ``paired_test.critical`` (what the gain test calls) replaced by a flat 2 standard errors (put
    back afterwards)."""
    kept = paired_test.critical
    paired_test.critical = lambda n, tests=1: paired_test.SE_FACTOR
    try:
        return false_help_rate(rule, design, noise, repeats, seed)
    finally:
        paired_test.critical = kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--old", type=Path, default=None)
    p.add_argument("--flat-2se", action="store_true")
    args = p.parse_args(argv)
    old = _old_verdict(args.old) if args.old else None
    rule = functools.partial(study.verdict, detect=False)  # the same decisions, without the detectable effect
    print(f"| design | noise x | curve | new rule: false 'helps' |{' flat 2 SE |' if args.flat_2se else ''}"
          f"{' old rule |' if old else ''}")
    print("|---|---|---|---|" + ("---|" if args.flat_2se else "") + ("---|" if old else ""))
    for name, design in DESIGNS.items():
        for k in (0.5, 1.0, 2.0, 4.0):
            for rise, shape in ((0.0, "flat"), (0.01, "rising 1 pt")):
                noise = Noise(rise=rise).scaled(k)
                new = false_help_rate(rule, design, noise, args.repeats, args.seed)
                cells = [name, f"{k:g}", shape, f"{100 * new:.1f}%"]
                if args.flat_2se:
                    cells.append(f"{100 * _flat(rule, design, noise, args.repeats, args.seed):.1f}%")
                if old:
                    cells.append(f"{100 * false_help_rate(old, design, noise, args.repeats, args.seed):.1f}%")
                print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The CMI study (issue 26): run its arms and report the verdict by the rule stated in the job file.

    python tools/cmi_study.py run --out runs/study-cmi-digits [--set method.iterations=20 ...] [--parallel 2]
    python tools/cmi_study.py run --job jobs/study_cmi_digits_noise_ipc10.yaml --out runs/study-cmi-noise \
        --alphas 0,0.05 --seeds 0,1,2
    python tools/cmi_study.py report runs/study-cmi-digits [--out docs/results/cmi_study_digits]
    python tools/cmi_study.py reverdict docs/results/cmi_study_digits/README.md   # the rule on a published table
    python tools/cmi_study.py progress runs/study-cmi-noise --steps 100,250,500,1000   # unfinished arms, from logs

``run``: pre-trains the proxy set once, then ``cmidd run JOB`` per arm, ``--parallel`` at a time (one torch thread
each): alpha in ``--alphas`` with seed 0, then (unless ``--no-repeat``) the zero arm and the best alpha (by final
accuracy) with seed 1; with ``--seeds 0,1,2`` every alpha with each seed instead (no second wave).
An arm whose folder already holds ``result.json`` is skipped, so an interrupted study continues. ``--set``
overrides go to every arm (a smoke run: ``--set method.iterations=4 --set eval.every=2 ...``). Without
``--tracking-uri`` the arms run ``--no-track``. Then ``report``: ``study.md`` (table + verdict) and ``study.png``.
``reverdict``: the verdict and each clause, from the per-run table of a published study (rows
``| alpha A, seed K | acc @ step ... |`` in %, the header naming the steps ``@ 500``; the runs themselves are gone).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from cmidd.study import StudyRun, clauses, load_runs, report, verdict  # noqa: E402

JOB = ROOT / "jobs" / "study_cmi_digits_ipc10.yaml"


def _arm_dir(out: Path, alpha: float, seed: int) -> Path:
    return out / f"alpha{alpha:g}-s{seed}"


def _pretrain(job_path: Path, out: Path, sets: list[str]) -> None:
    """The proxy set, once, before the arms start (concurrent arms would race to train it)."""
    from cmidd import proxies as proxy_zoo
    from cmidd.config import load_job
    from cmidd.runner import load_job_data, proxies_dir

    job = load_job(job_path, [*sets, f"output.dir={out / 'arm'}"])
    data = load_job_data(job)
    proxy_zoo.ensure(job.proxies, data, proxies_dir(job, data), job.seed, job.device)


def _run_arms(job_path: Path, out: Path, arms: list[tuple[float, int]], sets: list[str], parallel: int,
              uri: str | None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "platform")}
    todo = [a for a in arms if not (_arm_dir(out, *a) / "result.json").is_file()]
    running: list[tuple[subprocess.Popen, Path]] = []
    while todo or running:
        while todo and len(running) < parallel:
            alpha, seed = todo.pop(0)
            folder = _arm_dir(out, alpha, seed)
            folder.mkdir(parents=True, exist_ok=True)
            track = ["--tracking-uri", uri] if uri else ["--no-track"]
            cmd = [sys.executable, "-m", "cmidd.cli", "run", str(job_path), *track,
                   *(a for s in [*sets, f"cmi.alpha={alpha}", "cmi.lam=0", f"seed={seed}",
                                 f"output.dir={folder}"] for a in ("--set", s))]
            print(f"[study] start alpha {alpha:g} seed {seed} ({folder})", flush=True)
            with open(out / f"{folder.name}.log", "w") as log:  # the child keeps its own handle
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            running.append((proc, folder))
        time.sleep(0.5)
        for proc, folder in list(running):
            if proc.poll() is not None:
                running.remove((proc, folder))
                print(f"[study] done {folder.name}: exit {proc.returncode}", flush=True)
                if proc.returncode != 0:
                    raise SystemExit(f"arm {folder.name} failed; see {out / (folder.name + '.log')}")


def runs_from_table(text: str) -> list[StudyRun]:
    """The per-run table of a study's README (see the module docstring) as runs (eval-seed std unknown: 0)."""
    import re

    runs, steps = [], []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "run":
            steps = [int(m.group(1)) for c in cells[1:] if (m := re.fullmatch(r"@ (\d+)", c))]
        m = re.fullmatch(r"alpha ([\d.]+), seed (\d+)", cells[0]) if cells else None
        if m and steps:
            curve = {s: (float(v) / 100, 0.0) for s, v in zip(steps, cells[1:1 + len(steps)])}
            runs.append(StudyRun(Path("table"), float(m.group(1)), int(m.group(2)), 0.0, max(steps), curve, None))
    return sorted(runs, key=lambda r: (r.alpha, r.seed))


def runs_from_logs(roots: list[Path], steps: list[int], iterations: int) -> list[StudyRun]:
    """Each arm's evaluations so far, from its log (``progress``), as runs (eval-seed std from the logged
    accuracies; cmi_ratio from result.json when the run has finished): an interim verdict of a study cut short."""
    import json
    import math
    import re

    out = []
    for log in sorted(f for root in roots for f in Path(root).glob("alpha*-s*.log") if f.is_file()):
        m = re.fullmatch(r"alpha([\d.]+)-s(\d+)", log.stem)
        accs = [[float(a) for a in g.split()]
                for g in re.findall(r"eval \S+, \d+ seeds trained by [^:\n]*: acc ([\d. ]+)", log.read_text())]
        curve = {}
        for step, a in zip(steps, accs):
            mean = sum(a) / len(a)
            curve[step] = (mean, math.sqrt(sum((x - mean) ** 2 for x in a) / len(a)))
        res = log.with_suffix("") / "result.json"
        ratio = json.loads(res.read_text())["metrics"].get("cmi_ratio") if res.is_file() else None
        if m and curve:
            out.append(StudyRun(log.with_suffix(""), float(m.group(1)), int(m.group(2)), 0.0, iterations, curve,
                                ratio))
    return sorted(out, key=lambda r: (r.alpha, r.seed))


def calib_from_logs(roots: list[Path], every: int = 100) -> str:
    """alpha along the run, from the alpha arms' logs: at iteration 0 and every ``every`` iterations, g_DD,
    g_CMI, lambda and the realised alpha (lambda * g_CMI / g_DD), and lambda_0 * g_CMI / g_DD: the alpha the
    initial lambda alone would have given at those images (without recalibration; the images themselves are the
    recalibrated run's, so this is an estimate)."""
    import re

    pat = (r"cmi at iteration (\d+): g_DD ([\d.e+-]+), g_CMI ([\d.e+-]+), lambda ([\d.e+-]+) -> realised alpha "
           r"([\d.e+-]+)")
    rows = ["| run | iteration | g_DD | g_CMI | lambda | realised alpha | lambda_0 x g_CMI / g_DD |",
            "|---|---|---|---|---|---|---|"]
    for log in sorted(f for root in roots for f in Path(root).glob("alpha*-s*.log") if f.is_file()):
        found = [tuple(map(float, m)) for m in re.findall(pat, log.read_text())]
        if not found:
            continue
        lam0 = found[0][3]
        for it, dd, cm, lam, real in found:
            if int(it) % every == 0 or (it, dd, cm, lam, real) == found[-1]:
                rows.append(f"| {log.stem} | {int(it)} | {dd:.3g} | {cm:.3g} | {lam:.3g} | {real:.3g} | "
                            f"{lam0 * cm / dd:.3g} |")
    return "\n".join(rows)


def progress(roots: list[Path], steps: list[int]) -> str:
    """Per arm log (``alpha<a>-s<k>.log`` under each root), finished or not: the last iteration logged, the
    accuracy (mean of the eval seeds logged, %) at each evaluation so far (in order: ``steps``) and the realised
    alpha at each measurement logged (first, at 100, 250, 500 and the last)."""
    import re

    rows = ["| run | iteration | " + " | ".join(f"@ {s}" for s in steps) + " | realised alpha (iteration: value) |",
            "|---|---|" + "---|" * len(steps) + "---|"]
    for log in sorted(f for root in roots for f in Path(root).glob("alpha*-s*.log") if f.is_file()):
        text = log.read_text()
        its = re.findall(r"it (\d+)/(\d+) ", text)
        accs = [sum(map(float, a.split())) / len(a.split())
                for a in re.findall(r"eval \S+, \d+ seeds trained by [^:\n]*: acc ([\d. ]+)", text)]
        cal = [(int(i), float(r)) for i, r in re.findall(r"cmi at iteration (\d+): .* realised alpha ([\d.e+-]+)", text)]
        pick = [c for c in cal if c[0] in (0, 100, 250, 500)] + cal[-1:]
        cells = [log.stem, its[-1][0] if its else "0", *(f"{100 * a:.2f}" for a in accs[:len(steps)]),
                 *(["-"] * (len(steps) - min(len(accs), len(steps)))),
                 ", ".join(f"{i}: {r:.3g}" for i, r in dict(pick).items()) or "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--job", type=Path, default=JOB)
    r.add_argument("--set", action="append", default=[])
    r.add_argument("--alphas", default="0,0.01,0.05")
    r.add_argument("--parallel", type=int, default=2)
    r.add_argument("--no-repeat", action="store_true",
                   help="skip the second-seed wave (the zero arm and the best alpha again); e.g. a proxy-set variant")
    r.add_argument("--seeds", default=None,
                   help="run every alpha with each of these seeds (e.g. 0,1,2), seed by seed; no second-seed wave")
    r.add_argument("--tracking-uri", default=None)
    rep = sub.add_parser("report")
    rep.add_argument("root", type=Path)
    rep.add_argument("--out", type=Path, default=None)
    for q in (r, rep):
        q.add_argument("--precondition", type=float, default=None,
                       help="the zero arm's cmi_ratio must exceed this, else CMI had nothing to fix (e.g. 1.1)")
    rv = sub.add_parser("reverdict")
    rv.add_argument("table", type=Path)
    pg = sub.add_parser("progress")
    pg.add_argument("roots", type=Path, nargs="+")
    pg.add_argument("--steps", default="100,250,500,1000")
    args = p.parse_args(argv)
    if args.cmd == "progress":
        steps = [int(s) for s in args.steps.split(",")]
        print(progress(args.roots, steps))
        print("\n" + calib_from_logs(args.roots))
        runs = runs_from_logs(args.roots, steps, max(steps))
        if runs:
            print(f"\nInterim verdict on the checkpoints reached so far, paired where both arms have them (the rule of 2026-12-06): "
                  f"{verdict(runs, max(steps))[1]}")
            print("\n".join(f"- {c}" for c in clauses(runs, max(steps))))
        return 0
    if args.cmd == "reverdict":
        runs = runs_from_table(args.table.read_text())
        iterations = max(r.iterations for r in runs)
        print(f"{len(runs)} runs; verdict: {verdict(runs, iterations)[1]}")
        print("\n".join(f"- {c}" for c in clauses(runs, iterations)))
        return 0
    if args.cmd == "run":
        out = args.out.absolute()
        out.mkdir(parents=True, exist_ok=True)
        alphas = [float(a) for a in args.alphas.split(",")]
        _pretrain(args.job, out, args.set)
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [0]
        _run_arms(args.job, out, [(a, s) for s in seeds for a in alphas], args.set, args.parallel, args.tracking_uri)
        seed0 = [r for r in load_runs(out) if r.seed == 0 and r.alpha > 0]
        if seed0 and not args.no_repeat and not args.seeds:
            best = max(seed0, key=lambda r: r.curve[max(r.curve)][0]).alpha
            _run_arms(args.job, out, [(0.0, 1), (best, 1)], args.set, args.parallel, args.tracking_uri)
        root, dest = out, out
    else:
        root, dest = args.root, args.out
    res = report(root, dest, args.precondition)
    print(res["table"])
    print(f"Verdict: {res['verdict']}")
    print("files: " + ", ".join(res["files"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What alpha means for a class-by-class method (IDC): the lambda calibrated on the whole-set norms vs on the class
steps' norms, at a job's initial images (issue 34).

    python tools/alpha_by_class.py jobs/distill_idc_digits_ipc10.yaml --set cmi.alpha=0.05 [--set ...]

Trains (or loads) the job's proxy set, then over ``cmi.calibrate_draws`` draws prints g_DD and g_CMI both ways:
``whole`` (the DD loss and the whole set's CMI, one gradient each: the calibration before 2026-12-06) and
``by class`` (class c's DD term and class c's own CMI, as IDC's class steps apply them: the calibration now),
the lambda each gives, and the alpha the whole-set lambda realised on the class steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from cmidd import proxies as proxy_zoo  # noqa: E402
from cmidd.config import load_job  # noqa: E402
from cmidd.distill_state import iteration_generator, setup_run  # noqa: E402
from cmidd.lam import norms_by_class, norms_whole  # noqa: E402
from cmidd.hooks import Hooks  # noqa: E402
from cmidd.runner import load_job_data, proxies_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", type=Path)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args(argv)
    job = load_job(args.job, args.set)
    data = load_job_data(job)
    nets = proxy_zoo.ensure(job.proxies, data, proxies_dir(job, data), job.seed, job.device)
    unit = job.model_copy(update={"cmi": job.cmi.model_copy(update={"lam": 1.0, "alpha": 0.0})})
    run = setup_run(unit, data, nets, Hooks(), None, None, None, 1.0)
    sums = {"whole": [0.0, 0.0], "by class": [0.0, 0.0]}
    draws = job.cmi.calibrate_draws
    for m in range(draws):
        for name, fn in (("whole", norms_whole), ("by class", norms_by_class)):
            gen = iteration_generator(job.seed, m)
            run.method.begin_iteration(gen)
            dd, cm = fn(run, gen)
            sums[name][0] += dd / draws
            sums[name][1] += cm / draws
    a = job.cmi.alpha
    lam = {k: a * dd / cm for k, (dd, cm) in sums.items()}
    for k, (dd, cm) in sums.items():
        print(f"{k}: g_DD {dd:.4g}, g_CMI {cm:.4g} over {draws} draws -> lambda {lam[k]:.4g} (alpha {a:g})")
    dd, cm = sums["by class"]
    print(f"lambda whole / by class = {lam['whole'] / lam['by class']:.3g} ({data.num_classes} classes); the whole-set "
          f"lambda realised alpha {lam['whole'] * cm / dd:.4g} on the class steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Job launch (platform layer): the one place that picks the distillation loop (plain or Ray Train) for a job.

The core (``cmidd.runner``) runs a job with whatever loop it is given and never imports Ray; the CLI, the
tracking layer, the search, the demo and the bench call ``run_job`` here, which passes the Ray Train loop when
``scaling.workers > 1`` (importing Ray only then).
"""

from __future__ import annotations

from . import runner
from .data import Dataset
from .distill import Hooks, distill


def pick_loop(job) -> runner.Loop:
    """``distill`` for one worker; ``cmidd.ray.train.distill_distributed`` (imports ray) for more."""
    if getattr(job, "kind", None) == "distill" and job.scaling.workers > 1:
        from .ray.train import distill_distributed

        return distill_distributed
    return distill


def run_job(job, hooks: Hooks | None = None, resume: bool = False, data: Dataset | None = None) -> runner.JobResult:
    """``cmidd.runner.run_job`` with the loop the job's ``scaling`` asks for."""
    return runner.run_job(job, hooks, resume, data, loop=pick_loop(job))

"""Ray (the only importer of ray and optuna): ``train`` runs one distill job on N Ray Train workers, ``tune``
runs a search space with Ray Tune + Optuna + ASHA. Importing this package imports no ray; ``connect`` does, and
``run_job`` does for a job with ``scaling.workers > 1`` (the one place that picks the loop: the core
``cmidd.runner`` runs a job with whatever loop it is given and never imports Ray).

Inside this package ``import ray`` is the absolute import of the Ray library, never this package.

Example:
    >>> from cmidd.ray import connect
    >>> started = connect("auto")  # join the cluster ``ray start`` made; shut down later if started
"""

from __future__ import annotations

import os

from .. import runner
from ..distill import Hooks, distill
from ..errors import ConfigError

__all__ = ["connect", "pick_loop", "run_job"]


def pick_loop(job) -> runner.Loop:
    """``distill`` for one worker; ``cmidd.ray.train.distill_distributed`` (imports ray) for more."""
    if getattr(job, "kind", None) == "distill" and job.scaling.workers > 1:
        from .train import distill_distributed

        return distill_distributed
    return distill


def run_job(job, hooks: Hooks | None = None, resume: bool = False, data=None) -> runner.JobResult:
    """``cmidd.runner.run_job`` with the loop the job's ``scaling`` asks for (``pick_loop``)."""
    return runner.run_job(job, hooks, resume, data, loop=pick_loop(job))


def connect(address: str | None = None) -> bool:
    """Connect this process to Ray.

    Args:
        address: ``auto`` or ``HOST:PORT``; None = ``$RAY_ADDRESS`` (set inside ``ray job submit``), else a new
            local Ray sized to the machine (never a stale ``ray start`` cluster found in /tmp/ray).

    Returns:
        True when this call started or joined Ray (the caller then shuts its connection down); False when
        Ray was already initialized.

    Raises:
        ConfigError: no Ray cluster at ``address``.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"--address: cannot connect to a Ray cluster at {address!r}: {e}") from None
    return True

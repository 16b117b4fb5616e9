"""Ray (the only importer of ray and optuna): ``train`` runs one distill job on N Ray Train workers, ``tune``
runs a search space with Ray Tune + Optuna + ASHA. Importing this package imports no ray; ``connect`` does, and
``run_job`` does for a job with ``scaling.workers > 1`` (the one place that picks the loop: the core
``cmidd.runner`` runs a job with whatever loop it is given and never imports Ray).

Inside this package ``import ray`` is the absolute import of the Ray library, never this package.

Example:
    >>> from cmidd.ray import connected
    >>> with connected("auto"):  # join the cluster ``ray start`` made; left at the end if joined here
    ...     run_search(cfg, uri)
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator

from .. import runner
from ..distill import Hooks, distill
from ..errors import ConfigError

__all__ = ["connect", "connected", "disconnect", "pick_loop", "require", "run_job"]


def pick_loop(job) -> runner.Loop:
    """``distill`` for one worker; ``cmidd.ray.train.distill_distributed`` (imports ray) for more."""
    if getattr(job, "kind", None) == "distill" and job.scaling.workers > 1:
        from .train import distill_distributed

        return distill_distributed
    return distill


def run_job(job, hooks: Hooks | None = None, resume: bool = False, data=None) -> runner.JobResult:
    """``cmidd.runner.run_job`` with the loop the job's ``scaling`` asks for (``pick_loop``)."""
    return runner.run_job(job, hooks, resume, data, loop=pick_loop(job))


def require(*modules: str) -> None:
    """Import ``ray`` and ``modules`` (e.g. ``"ray.tune"``, ``"optuna"``) now, so that a caller which needs them
    fails at once when one is missing (``cmidd bench`` then reports its suite unavailable).

    Raises:
        ImportError: one of them is not installed.
    """
    for name in ("ray", *modules):
        importlib.import_module(name)


def connect(address: str | None = None, *, num_cpus: int | None = None,
            include_dashboard: bool | None = None) -> bool:
    """Connect this process to Ray.

    Args:
        address: ``auto`` or ``HOST:PORT``; None = ``$RAY_ADDRESS`` (set inside ``ray job submit``), else a new
            local Ray sized to the machine (never a stale ``ray start`` cluster found in /tmp/ray); ``local`` =
            a new local Ray whatever ``$RAY_ADDRESS`` says.
        num_cpus: the CPUs of a new local Ray (None = the machine's); only with a new local Ray.
        include_dashboard: start Ray's dashboard with a new local Ray (None = Ray's default).

    Returns:
        True when this call started or joined Ray (the caller then shuts its connection down: ``disconnect``);
        False when Ray was already initialized.

    Raises:
        ConfigError: no Ray cluster at ``address``.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    options = {k: v for k, v in (("num_cpus", num_cpus), ("include_dashboard", include_dashboard)) if v is not None}
    try:
        ray.init(address=address, log_to_driver=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"--address: cannot connect to a Ray cluster at {address!r}: {e}") from None
    return True


def disconnect() -> None:
    """Shut down this process's Ray connection (a local Ray it started stops with it); nothing if none."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def connected(address: str | None = None, **options: int | bool | None) -> Iterator[bool]:
    """``connect`` for the ``with`` block, then ``disconnect`` if this call connected.

    Args:
        address: as ``connect``.
        **options: ``connect``'s ``num_cpus`` and ``include_dashboard``.

    Yields:
        Whether this block connected (False: Ray was already initialized and stays so).
    """
    started = connect(address, **options)
    try:
        yield started
    finally:
        if started:
            disconnect()

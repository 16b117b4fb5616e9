"""Ray (the only importer of ray and optuna): ``train`` runs one distill job on N Ray Train workers, ``tune``
runs a search space with Ray Tune + Optuna + ASHA. Importing this package imports no ray; ``connect`` does.

Inside this package ``import ray`` is the absolute import of the Ray library, never this package.

Example:
    >>> from cmidd.ray import connect
    >>> started = connect("auto")  # join the cluster ``ray start`` made; shut down later if started
"""

from __future__ import annotations

import os

from ..errors import ConfigError

__all__ = ["connect"]


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

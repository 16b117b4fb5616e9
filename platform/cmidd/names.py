"""The names every layer shares: metrics (as logged to MLflow, written to result.json and ranked by the registry).

Light on purpose (no torch, no pydantic): the CLI's parser, the config and the tracking wing import it.
"""

from __future__ import annotations

CROSS_ARCH_MEAN = "acc/cross_arch_mean"  # the mean test accuracy over the evaluation architectures: the ranking
CROSS_ARCH_STD = "acc_std/cross_arch_mean"  # its seed spread


def acc(arch: str) -> str:
    """``acc/<arch>``: the mean test accuracy of ``arch`` over the evaluation seeds."""
    return f"acc/{arch}"


def acc_std(arch: str) -> str:
    """``acc_std/<arch>``: its seed spread (population std)."""
    return f"acc_std/{arch}"

"""Shared fixtures: the digits data set (8x8, loaded once) and tiny job mappings."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def digits():
    from cmidd.data import load_dataset

    return load_dataset("digits")


def tiny_distill(tmp_path, **over) -> dict:
    """A distill job mapping at toy size (8x8 digits, ConvNetD1 width 16, few iterations and epochs)."""
    job = {
        "kind": "distill", "name": "tiny", "seed": 0, "ipc": 2,
        "data": {"name": "digits"},
        "net": {"name": "ConvNetD1", "width": 16},
        "method": {"name": "dm", "iterations": 4, "batch_real": 16},
        "cmi": {"lam": 0},
        "proxies": {"set": "convnet-x1", "epochs": 1, "dir": str(tmp_path / "proxies")},
        "eval": {"archs": ["ConvNetD1"], "num_eval": 1, "epochs": 2},
        "output": {"dir": str(tmp_path / "job"), "checkpoint_every": 2},
    }
    for k, v in over.items():
        node = job
        *parents, leaf = k.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return job


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray with 2 CPUs for the whole test session (each ray.init costs 2.5-4 s)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # address="local": a new Ray, never a cluster some `ray start` on this machine left in /tmp/ray
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()

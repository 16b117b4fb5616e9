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


# A search's records (Ray Tune + Optuna trials as MLflow runs): the ray wing writes the report key, the tracking
# wing the tags; both read them, so they live here rather than in either wing.
TAG_SEARCH = "cmidd.search"  # the search's name, on its parent and trial runs
TAG_TRIAL = "cmidd.tune_trial_id"  # a trial's child run: its Tune trial id
TAG_NODE = "cmidd.node_id"  # the Ray node the trial ran on
TAG_STOPPED = "cmidd.search.stopped"  # a trial ASHA stopped (its run ends KILLED, never registered)
TAG_SEARCH_PARENT = "cmidd.search.parent"  # a re-scoring/baseline run of a search (not mlflow.parentRunId:
#                                             the parent's children are its trials)
# The costs a multi-objective search may minimize beside accuracy (search.objectives): every Tune report of a trial
# carries them, the final one with the runner's distillation seconds.
IPC = "ipc"  # the trial's images per class
DISTILL_SECONDS = "time/distill_s"  # wall seconds of the distillation (intermediate reports: so far)
COSTS = (IPC, DISTILL_SECONDS)
FINAL = "final"  # key of a trial's last report (after the full evaluation); a trial without it was stopped


# The name of a set (dm / dm+cmi) is a rule of the CMI weight: cmidd.lam.set_label.


# What MLflow's UI shows first (the tracking wing logs them; the demo names its parent's metrics with them)
KEY = "_key/"  # metrics under it sort first in the runs table's column picker
KEY_LAMBDA, KEY_RATIO, KEY_ACC, KEY_GAIN = (f"{KEY}{k}" for k in ("lambda", "cmi_ratio", "cross_arch_acc",
                                                                 "gain_over_random_pt"))
TAG_GAIN = "gain_over_random"  # on registry versions: "+3.2 +- 0.8 pt (n=3)"


def set_model_name(dataset: str, ipc: int) -> str:
    """The registered model of a data set's distilled sets at one IPC: ``distilled-<dataset>-ipc<k>``."""
    return f"distilled-{dataset}-ipc{int(ipc)}"


def set_of_model(name: str) -> tuple[str, int]:
    """(dataset, ipc) of a model named by ``set_model_name``."""
    dataset, _, ipc = name.removeprefix("distilled-").rpartition("-ipc")
    return dataset, int(ipc)

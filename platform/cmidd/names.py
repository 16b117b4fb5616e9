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
FINAL = "final"  # key of a trial's last report (after the full evaluation); a trial without it was stopped


# The name of a set in tables, answers and plots: the one rule, used by the runner (from a job) and by the
# registry's answers (from a run's flat params), so the two never disagree.
CMI_SUFFIX = "+cmi"


def _weight(v: object) -> float:
    """A CMI weight from a config value or an MLflow param string (absent, empty or not a number: 0)."""
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def set_label(method: str, lam: object = 0.0, alpha: object = 0.0, cmi_on: object = True) -> str:
    """``<method>`` or ``<method>+cmi``: ``+cmi`` when CMI weighed the set, by ``cmi.lam`` or by ``cmi.alpha``
    (a search trial of the lambda = 0 arm, ``cmi_on`` false, weighed nothing).

    Example:
        >>> set_label("dm", lam=0, alpha=0.05), set_label("dm", lam="10"), set_label("dm", alpha=0.05, cmi_on="False")
        ('dm+cmi', 'dm+cmi', 'dm')
    """
    on = cmi_on if isinstance(cmi_on, bool) else str(cmi_on).lower() != "false"
    return method + (CMI_SUFFIX if on and (_weight(lam) > 0 or _weight(alpha) > 0) else "")


def set_label_of_params(params: dict[str, str], method: str | None = None) -> str:
    """``set_label`` of a run from its flat params (``method.name``, ``cmi.lam``, ``cmi.alpha``, ``cmi_on``);
    ``method`` (a version's ``method`` tag: an ensemble's) when the run has no ``method.name``; ``-`` without
    either."""
    name = params.get("method.name") or method or "-"
    return set_label(name, params.get("cmi.lam"), params.get("cmi.alpha"), params.get("cmi_on", True))

"""What a run says about itself: run tags (built here only), job params, the code version.

Every run cmidd creates (a job, a search's parent, an ensemble build, a bench report) carries the same tag
keys from ``run_tags``: ``kind``, ``dataset``, ``code_version``, ``mlflow.source.name``/``type``, the git commit
and the user; ``cmidd runs`` reads ``kind`` from them.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import math
import subprocess
from pathlib import Path

from .. import __version__
from ..config import flatten
from ..lam import LAM_KEY, RATIO_KEY, fmt_lam, lam_effective


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The git commit of the cmidd source tree (``+dirty`` when it has uncommitted changes), or None."""
    here = str(Path(__file__).parent)
    try:
        sha = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def code_version() -> str:
    """``<cmidd version>+g<sha12>[.dirty]``, or the plain version outside a git checkout."""
    sha = git_sha()
    if sha is None:
        return __version__
    return f"{__version__}+g{sha[:12]}" + (".dirty" if sha.endswith("+dirty") else "")


def flat_params(values: dict) -> dict[str, str]:
    """A nested mapping as MLflow params: flattened keys, lists and dicts as JSON, everything else ``str``."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in flatten(values).items()}


def job_params(job) -> dict[str, str]:
    """The flattened config as MLflow params (lists as JSON, everything else as ``str``)."""
    return flat_params(job.model_dump(mode="json"))


def proxy_label(job) -> str:
    """What a distill job's proxies were: ``none`` (lambda 0), the registry reference, or the set name."""
    if not job.cmi.on:
        return "none"
    return job.proxies.from_registry or job.proxies.set


def run_tags(kind: str, dataset: str | None = None, **extra: str) -> dict[str, str]:
    """The tags of a new run of ``kind`` (``distill``, ``search``, ``ensemble``, ``report``, ...).

    Args:
        kind: the run's kind (tag ``kind``).
        dataset: the data set's name (tag ``dataset``; ``-`` when the run spans several, like a report).
        **extra: more tags (``ipc``, ``method``, ...), values as given.

    Returns:
        {tag: value}.
    """
    tags = {
        "kind": kind, "dataset": dataset or "-", "code_version": code_version(),
        "mlflow.source.name": "cmidd", "mlflow.source.type": "LOCAL",
    }
    if git_sha():
        tags["mlflow.source.git.commit"] = git_sha().removesuffix("+dirty")
    with contextlib.suppress(Exception):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    return tags | extra


def distill_tags(job, metrics: dict | None = None) -> dict[str, str]:
    """What a distill job is (method, lambda, proxy set): on its run and on the version it registers.

    ``lambda`` is the effective lambda (``cmidd.lam``, 3 significant digits) once ``metrics`` report it; before
    that (a new run of an alpha job) ``alpha <a>``. ``cmi.alpha``, ``cmi.lam_effective`` (full precision, when
    known) and ``cmi_ratio`` (when measured) come too.
    """
    lam = lam_effective(job.cmi.lam, job.cmi.alpha, (metrics or {}).get(LAM_KEY))
    known = not math.isnan(lam)  # NaN: an alpha job not calibrated yet
    shown = fmt_lam(lam) if known else f"alpha {job.cmi.alpha:g}"
    tags = {"method": job.method.name, "lambda": shown, "cmi.alpha": f"{job.cmi.alpha:g}",
            "proxy_set": proxy_label(job)}
    if known:
        tags[LAM_KEY] = repr(float(lam))
    if RATIO_KEY in (metrics or {}):
        tags[RATIO_KEY] = f"{metrics[RATIO_KEY]:.6g}"  # scale-free CMI of the set (docs/cmi.md)
    return tags


_KIND_TAGS = {  # what a run of this kind says beyond kind, dataset and code version (before it ran)
    "distill": lambda job: {"ipc": str(job.ipc), **distill_tags(job)},
    "ensemble": lambda job: {"ensemble_of": json.dumps(job.source_labels()), "ensemble_mode": job.mode},
    "baseline": lambda job: {"ipc": str(job.ipc), "baseline.draws": ",".join(map(str, job.draws))},
}


def job_tags(job) -> dict[str, str]:
    """Run tags: kind, dataset, code version; distill jobs add ipc, method, lambda and proxy set, ensemble jobs
    their sources and mode."""
    extra = _KIND_TAGS.get(job.kind)
    return run_tags(job.kind, job.data.name, **(extra(job) if extra else {}))

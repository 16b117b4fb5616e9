"""What MLflow's UI shows first: links that open the model-training view, the few key numbers under names that
sort first, the gain over random-real on registry versions, and a parent run that holds a demo's runs.

The training view: MLflow 3.17's UI has a global switch "GenAI | Model training" (its sidebar) that decides
which view an experiment opens in; it defaults to GenAI (the traces page) and, in 3.17, takes precedence over
the experiment's ``mlflow.experimentKind`` tag (cmidd still sets that tag: earlier 3.x UIs read it). A link
with ``?workflowType=machine_learning`` opens the training view (runs table, metric charts) whatever the
switch says; ``ui_url`` builds such links.

Key numbers (``KEY_*``): the effective lambda, the CMI ratio, the cross-architecture accuracy and the gain over
random-real, logged again under ``_key/...`` (``_`` sorts before every letter, in both code-point and locale
order: first in the UI's column picker and metric charts, as one "_key" chart section). The old names stay.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from ..names import CROSS_ARCH_MEAN, KEY_ACC, KEY_GAIN, KEY_LAMBDA, KEY_RATIO, TAG_GAIN
from ..report import gain_text
from ._client import log_metrics, log_params, metrics_at, mlflow_errors, open_run, set_tags
from ._tags import run_tags

TRAINING_VIEW = "workflowType=machine_learning"
GAIN_NOTE = "gain over random-real "  # the same, at the end of the version's description
PARENT = "mlflow.parentRunId"


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The UI page of an experiment (or of one of its runs) on the MLflow server ``uri``, in the training view;
    None for a store that is not a server (sqlite: start ``mlflow server`` on it first)."""
    if not uri.startswith(("http://", "https://")):
        return None
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{uri.rstrip('/')}/{page}?{TRAINING_VIEW}"


def ui_hint(uri: str, experiment_id: str) -> str:
    """One line for the user: the URL on a server, else how to open the store in the UI."""
    url = ui_url(uri, experiment_id)
    if url is not None:
        return f"mlflow ui: {url}"
    return (f"mlflow ui: mlflow server --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then "
            f"http://127.0.0.1:5000/#/experiments/{experiment_id}?{TRAINING_VIEW}")


def run_ui_hint(uri: str, run_id: str) -> str:
    """``ui_hint`` for the experiment of run ``run_id``, the run's own page on a server."""
    from ._client import client_for

    with mlflow_errors():
        exp = client_for(uri).get_run(run_id).info.experiment_id
    url = ui_url(uri, exp, run_id)
    return f"mlflow ui: {url}" if url else ui_hint(uri, exp)


def key_metrics(metrics: dict[str, Any], lam: float | None = None) -> dict[str, float]:
    """The key numbers of a run's final ``metrics`` (and its effective lambda) under their ``_key/`` names."""
    out = {KEY_LAMBDA: lam, KEY_RATIO: metrics.get("cmi_ratio"), KEY_ACC: metrics.get(CROSS_ARCH_MEAN)}
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def log_key_metrics(client: MlflowClient, run_id: str, metrics: dict[str, Any], lam: float | None = None,
                    step: int = 0) -> None:
    """``key_metrics`` as run metrics at ``step``, and the lambda as a param too (params are another column
    group)."""
    keys = key_metrics(metrics, lam)
    log_metrics(client, run_id, metrics_at(step, keys))
    if KEY_LAMBDA in keys:
        log_params(client, run_id, {KEY_LAMBDA: repr(keys[KEY_LAMBDA])})


def tag_gains(client: MlflowClient, answer: dict[str, Any]) -> list[dict[str, Any]]:
    """Put each version's gain over random-real (a ``best_set`` answer's ``baseline.versions``, paired draws)
    on the version (tag ``gain_over_random``, and the end of its description, replaced when tagged again) and on
    the run that scored it (metric ``_key/gain_over_random_pt``).

    Returns:
        the entries tagged (none when no random-real draw was logged under the answer's protocol).
    """
    base = answer.get("baseline") or {}
    done = []
    with mlflow_errors():
        for g in base.get("versions") or []:
            mv = client.get_model_version(answer["name"], str(g["version"]))
            client.set_model_version_tag(answer["name"], str(g["version"]), TAG_GAIN, gain_text(g))
            # and in the description, which the version's page shows first (its tags table shows the first few)
            head = (mv.description or "").split(GAIN_NOTE)[0].rstrip("; ")
            client.update_model_version(answer["name"], str(g["version"]),
                                        description=f"{head}; {GAIN_NOTE}{gain_text(g)}" if head else
                                        f"{GAIN_NOTE}{gain_text(g)}")
            if mv.run_id:
                log_metrics(client, mv.run_id, metrics_at(0, {KEY_GAIN: float(g["gain"])}))
            done.append(g)
    return done


@contextlib.contextmanager
def parent_run(client: MlflowClient, experiment: str, run_name: str, kind: str, dataset: str,
               **tags: str) -> Iterator[str]:
    """A parent run (``open_run``: FINISHED, or FAILED with the error) whose id the caller passes to its child runs
    (tag ``mlflow.parentRunId``: the UI nests them under it)."""
    with open_run(client, experiment, run_name, run_tags(kind, dataset, **tags)) as run:
        yield run.run_id


def log_summary(client: MlflowClient, run_id: str, figures: list[Path], metrics: dict[str, float],
                tags: dict[str, str] | None = None) -> None:
    """A parent run's figures (artifacts at the top level: the UI previews a PNG), metrics and tags."""
    with mlflow_errors():
        for f in figures:
            if Path(f).is_file():
                client.log_artifact(run_id, str(f))
        finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if finite:
            log_metrics(client, run_id, metrics_at(0, finite))
        if tags:
            set_tags(client, run_id, tags)

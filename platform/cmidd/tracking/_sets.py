"""The registry of distilled sets: register a verified set once, keep ``champion`` on the best, read it back.

A set is a data artifact, not a model: a version of ``distilled-<dataset>-ipc<k>`` has as source the run's
verified ``synthetic/`` folder (no pyfunc wrapper, no second copy of the files). Distill jobs, the top trials
of a search and ensembles all register through ``register_set``; only their extra tags differ.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..errors import CmiddError, ConfigError, IntegrityError, UnknownNameError
from ..runner import JobResult
from ..synthetic import MANIFEST, SyntheticSet, replace_dir
from ._client import CHAMPION, DEFAULT_METRIC, SYNTHETIC, client_for, ensure_model, mlflow_errors, resolve_uri
from ._tags import code_version, distill_tags

log = logging.getLogger(__name__)


def set_model_name(dataset: str, ipc: int) -> str:
    """``distilled-<dataset>-ipc<k>``."""
    return f"distilled-{dataset}-ipc{int(ipc)}"


def load_verified(folder: Path, label: str) -> SyntheticSet:
    """``SyntheticSet.load`` with the error naming ``label`` instead of a temporary folder."""
    try:
        return SyntheticSet.load(folder)
    except IntegrityError as e:
        raise IntegrityError(str(e).replace(str(folder), label)) from None


def verify_remote_set(client: MlflowClient, run_id: str, path: str, content_sha256: str) -> None:
    """Download ``runs:/run_id/path`` and check every sha256 and that it holds the set we uploaded.

    Raises:
        IntegrityError: a file is missing or altered, or the content is another set.
    """
    with tempfile.TemporaryDirectory(prefix="cmidd-verify-") as tmp:
        got = Path(client.download_artifacts(run_id, path, tmp))
        synset = load_verified(got, f"runs:/{run_id}/{path}")
        if synset.sha256() != content_sha256:
            raise IntegrityError(f"runs:/{run_id}/{path}: uploaded set differs from the distilled one")
        if not (got / "grid.png").is_file():
            raise IntegrityError(f"runs:/{run_id}/{path}: grid.png is missing")


def register_set(client: MlflowClient, run_id: str, synset: SyntheticSet, metrics: dict[str, Any],
                 description: str, extra_tags: dict[str, str] | None = None,
                 created: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Register ``runs:/run_id/synthetic`` as a version of ``distilled-<dataset>-ipc<k>``; move ``champion``.

    Call it only after ``verify_remote_set``: no version may point at missing or partial files. Idempotent on the
    set's content: if a version of the model already holds a set with the same content sha256, that version is
    returned instead of a new one (recorded in ``created`` with ``existing: True``, which a failure never deletes).

    Args:
        client: the store's client.
        run_id: the run holding the verified ``synthetic/`` artifact.
        synset: that set (its meta gives dataset, ipc and image size; its content sha256 becomes a tag).
        metrics: the run's metrics; ``acc/``, ``acc_std/`` and ``ece/`` ones become tags.
        description: the version's description.
        extra_tags: what made the set (a job's method, lambda and proxy set; an ensemble's sources and mode).
        created: the new version is appended here as soon as it exists (for clean-up on a later failure).

    Returns:
        {"name", "version", "alias"}: alias is ``champion`` if this version holds it.
    """
    dataset, ipc = str(synset.meta["dataset"]), synset.ipc
    name = set_model_name(dataset, ipc)
    ensure_model(client, name, f"Distilled {dataset} sets, {ipc} images per class",
                 {"dataset": dataset, "ipc": str(ipc)})
    accs = {k: f"{v:.6g}" for k, v in metrics.items()
            if k.startswith(("acc/", "acc_std/", "ece/")) and isinstance(v, (int, float))}
    tags = {**(extra_tags or {}), "dataset": dataset, "ipc": str(ipc), "im_size": str(synset.meta["im_size"]),
            "content_sha256": synset.sha256(), "code_version": code_version(), **accs}
    same = [v for v in client.search_model_versions(f"name = '{name}'")
            if v.tags.get("content_sha256") == tags["content_sha256"]]
    if same:  # idempotent on content: a resumed run (or a rerun) that made the same set adds no version
        mv = min(same, key=lambda v: int(v.version))
        log.info("%s version %s already holds this set (sha256 %s): not registered again", name, mv.version,
                 tags["content_sha256"][:16])
        champion = move_champion(client, name, also_run=run_id)
        entry = {"name": name, "version": int(mv.version), "alias": CHAMPION if champion == int(mv.version) else None,
                 "existing": True}  # never deleted by this run's failure clean-up
        if created is not None:
            created.append(entry)
        return entry
    mv = client.create_model_version(name, f"runs:/{run_id}/{SYNTHETIC}", run_id=run_id, tags=tags,
                                     description=description)
    entry = {"name": name, "version": int(mv.version), "alias": None}
    if created is not None:
        created.append(entry)
    champion = move_champion(client, name, also_run=run_id)
    log.info("registered %s version %s (champion: version %s)", name, mv.version, champion)
    entry["alias"] = CHAMPION if champion == entry["version"] else None
    return entry


def register_distilled(client: MlflowClient, run_id: str, job, result: JobResult,
                       created: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``register_set`` for a distill job's set, tagged with its method, lambda and proxy set."""
    return register_set(client, run_id, result.synset, result.metrics,
                        f"{job.name}: {job.method.name}, lambda={job.cmi.lam}", distill_tags(job), created)


def move_champion(client: MlflowClient, name: str, metric: str = DEFAULT_METRIC,
                  also_run: str | None = None) -> int | None:
    """Point ``champion`` at the best version by ``metric``; returns its number (None if none qualifies).

    Ties keep the older version. Two jobs registering at once may both move the alias; each re-reads the
    versions after setting it and corrects a stale choice once.
    """
    best = None
    for _ in range(2):
        ranked = _ranked(client, name, metric, also_run)
        if not ranked:
            return None
        best = int(ranked[0][1].version)
        client.set_registered_model_alias(name, CHAMPION, str(best))
        if int(client.get_registered_model(name).aliases.get(CHAMPION, best)) == best:
            break
    return best


def _ranked(client: MlflowClient, name: str, metric: str, also_run: str | None = None):
    """Versions of ``name`` joined with their runs, best first by ``metric`` (registry versions carry no
    metrics of their own). Only versions of FINISHED, active runs count (plus ``also_run``, registering now).

    Returns:
        [(value, ModelVersion, Run)].
    """
    out = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        try:
            run = client.get_run(mv.run_id)
        except MlflowException:
            continue  # run deleted from the store
        ok = run.info.status == "FINISHED" or run.info.run_id == also_run
        if ok and run.info.lifecycle_stage == "active" and metric in run.data.metrics:
            out.append((run.data.metrics[metric], mv, run))
    out.sort(key=lambda t: (-t[0], int(t[1].version)))
    return out


def _require_model(client: MlflowClient, name: str, prefix: str) -> Any:
    try:
        return client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models(f"name LIKE '{prefix}%'"))
        raise UnknownNameError(
            f"no registered model {name!r} in this store; registered: {', '.join(known) or 'none'}"
        ) from None


def _describe(client: MlflowClient, mv, run, aliases: dict[str, int]) -> dict[str, Any]:
    """The JSON object of a version: name, version, run_id, alias, metrics, params, source."""
    held = sorted(a for a, v in aliases.items() if int(v) == int(mv.version))
    return {
        "name": mv.name, "version": int(mv.version), "run_id": mv.run_id,
        "alias": CHAMPION if CHAMPION in held else (held[0] if held else None),
        "metrics": dict(sorted(run.data.metrics.items())), "params": dict(sorted(run.data.params.items())),
        "source": mv.source,
    }


def best_set(dataset: str, ipc: int, metric: str = DEFAULT_METRIC, uri: str | None = None) -> dict[str, Any]:
    """The best registered version of ``distilled-<dataset>-ipc<k>`` by ``metric`` (higher is better).

    Returns:
        {"name", "version", "run_id", "alias", "metrics": {...}, "params": {...}, "source"}.

    Raises:
        UnknownNameError: no such registered model.
        ConfigError: no version's run has ``metric`` (the message lists the metrics they have).

    Example:
        >>> best_set("digits", 10)["params"]["cmi.lam"]
        '10.0'
    """
    with mlflow_errors():
        client = client_for(resolve_uri(uri))
        name = set_model_name(dataset, ipc)
        model = _require_model(client, name, "distilled-")
        ranked = _ranked(client, name, metric)
        if not ranked:
            have = sorted({k for v in client.search_model_versions(f"name = '{name}'")
                           for k in _safe_metrics(client, v.run_id)})
            raise ConfigError(
                f"--metric: no finished version of {name} has {metric!r}; "
                f"its runs have: {', '.join(have) or 'none'}"
            )
        _, mv, run = ranked[0]
        return _describe(client, mv, run, model.aliases)


def _safe_metrics(client: MlflowClient, run_id: str) -> list[str]:
    try:
        return list(client.get_run(run_id).data.metrics)
    except MlflowException:
        return []



def _pick_version(client: MlflowClient, name: str, version: int | None, alias: str | None):
    """The version asked for: a number, an alias, else ``champion``, else the best by the default metric."""
    if version is not None and alias is not None:
        raise ConfigError("--version and --alias: give one, not both")
    _require_model(client, name, "distilled-")
    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        what = f"version {version}" if version is not None else f"alias {alias!r}"
        raise UnknownNameError(f"{name} has no {what}") from None
    with contextlib.suppress(MlflowException):
        return client.get_model_version_by_alias(name, CHAMPION)
    ranked = _ranked(client, name, DEFAULT_METRIC)
    if not ranked:
        raise UnknownNameError(f"{name} has no champion and no finished version to pick")
    return ranked[0][1]


def download_source(client: MlflowClient, source: str, dst: str) -> Path:
    """Download a version's ``runs:/<run>/<path>`` source with *this* client (``models:/`` URIs would be
    resolved against MLflow's global registry URI, not ours)."""
    run_id, _, path = source.removeprefix("runs:/").lstrip("/").partition("/")
    if not source.startswith("runs:/") or not run_id or not path:
        raise CmiddError(f"version source {source!r} is not runs:/<run>/<path> (what cmidd registers)")
    return Path(client.download_artifacts(run_id, path, dst))


def pull(dataset: str, ipc: int, out: str | Path, version: int | None = None, alias: str | None = None,
         uri: str | None = None) -> Path:
    """Download a registered set into ``out``, verifying every checksum before anything lands there.

    ``out`` must be empty, missing, or hold a previously pulled set (then it is replaced atomically).
    A ``registry.json`` beside the set records where it came from.

    Returns:
        ``out``, loadable with ``SyntheticSet.load(out)``.

    Raises:
        IntegrityError: a file is missing or does not match its sha256 (``out`` is left untouched).
        UnknownNameError: no such model, version or alias.
        ConfigError: ``out`` holds something else; both ``version`` and ``alias`` given.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise ConfigError(f"--out: {out} exists and is not a pulled set; choose an empty or new folder")
    with mlflow_errors():
        client = client_for(resolve_uri(uri))
        name = set_model_name(dataset, ipc)
        mv = _pick_version(client, name, version, alias)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.pull-", dir=out.parent))
        try:
            got = download_source(client, mv.source, str(tmp))
            _check_pulled(got, mv)
            record = {"name": name, "version": int(mv.version), "run_id": mv.run_id, "source": mv.source,
                      "tracking_uri": resolve_uri(uri), "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (got / "registry.json").write_text(json.dumps(record, indent=2))
            replace_dir(got, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_pulled(folder: Path, mv) -> None:
    label = f"{mv.name} version {mv.version} ({mv.source})"
    synset = load_verified(folder, label)
    want = (mv.tags or {}).get("content_sha256")
    if want and synset.sha256() != want:
        raise IntegrityError(f"{label}: content sha256 differs from the version's tag: refusing to pull")


def load_set(dataset: str, ipc: int, version: int | None = None, alias: str | None = None,
             uri: str | None = None) -> SyntheticSet:
    """A registered set in memory (``champion`` unless ``version`` or ``alias``), checksums verified.

    Example:
        >>> s = load_set("digits", 10, alias="champion")
        >>> s.images.shape
        torch.Size([100, 1, 8, 8])
    """
    with tempfile.TemporaryDirectory(prefix="cmidd-set-") as tmp:
        return SyntheticSet.load(pull(dataset, ipc, Path(tmp) / "set", version, alias, uri))


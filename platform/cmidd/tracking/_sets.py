"""The registry of distilled sets: register a verified set once, keep the champions per protocol, read it back.

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
from ..names import set_model_name
from ..protocol import TAG_ID, TAG_JSON, TAG_SUMMARY, UNKNOWN
from ..runner import JobResult
from ..outdir import MARKER
from ..synthetic import GRID, MANIFEST, TENSOR_FILES, SyntheticSet
from ..files import replace_dir
from ._client import CHAMPION, DEFAULT_METRIC, SYNTHETIC, client_for, ensure_model, mlflow_errors, resolve_uri
from ._ranking import (
    answer, champion_alias, default_protocol, groups, move_champion, pick_protocol, require_versions,
    version_protocol,
)
from ._tags import code_version, distill_tags

log = logging.getLogger(__name__)


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


def upload_set(client: MlflowClient, run_id: str, synset: SyntheticSet) -> str:
    """Log ``synset`` as the run's ``synthetic/`` artifact and verify it by download; returns its ``runs:/`` URI.

    A run that scores a set made elsewhere (a re-score, a search's registration) registers it from its own copy:
    an MLflow server accepts a version's ``runs:/`` source only inside the run the version names
    (``create_model_version``'s run_id), and that run's metrics are the ones that rank the version.
    """
    with tempfile.TemporaryDirectory(prefix="cmidd-upload-") as tmp:
        synset.save(Path(tmp) / SYNTHETIC)
        client.log_artifacts(run_id, str(Path(tmp) / SYNTHETIC), SYNTHETIC)
    verify_remote_set(client, run_id, SYNTHETIC, synset.sha256())
    return f"runs:/{run_id}/{SYNTHETIC}"


def register_set(client: MlflowClient, run_id: str, synset: SyntheticSet, metrics: dict[str, Any],
                 description: str, extra_tags: dict[str, str] | None = None,
                 created: list[dict[str, Any]] | None = None, source: str | None = None) -> dict[str, Any]:
    """Register a verified set as a version of ``distilled-<dataset>-ipc<k>``; move the champions.

    Call it only after ``verify_remote_set``: no version may point at missing or partial files. The version
    carries the evaluation protocol of the run that scored it (the run's ``protocol.*`` tags), and is ranked
    only against versions of that protocol (``_ranking``). Idempotent on (content, protocol): if a version of the
    model already holds a set with the same content sha256 scored under the same protocol, that version is
    returned instead of a new one (recorded in ``created`` with ``existing: True``, which a failure never deletes);
    the same set re-scored under another protocol is a new version of that protocol.

    Args:
        client: the store's client.
        run_id: the run that scored the set (its metrics rank the version; its protocol tags are copied).
        synset: that set (its meta gives dataset, ipc and image size; its content sha256 becomes a tag).
        metrics: the run's metrics; the ``acc/`` ones become tags.
        description: the version's description.
        extra_tags: what made the set (a job's method, lambda and proxy set; an ensemble's sources and mode).
        created: the new version is appended here as soon as it exists (for clean-up on a later failure).
        source: where the files are (default ``runs:/<run_id>/synthetic``); an MLflow server accepts only a
            source inside ``run_id`` (a re-evaluation first copies the set into its run: ``upload_set``).

    Returns:
        {"name", "version", "alias"}: alias is ``champion`` or ``champion-<protocol id>`` if this version
        holds it, else None.
    """
    dataset, ipc = str(synset.meta["dataset"]), synset.ipc
    name = set_model_name(dataset, ipc)
    ensure_model(client, name, f"Distilled {dataset} sets, {ipc} images per class",
                 {"dataset": dataset, "ipc": str(ipc)})
    # short tags (the UI truncates long ones): the accuracies, not their spreads or the ECE, and the protocol's id and
    # summary, not its JSON (all on the run that scored the set)
    accs = {k: f"{v:.6g}" for k, v in metrics.items() if k.startswith("acc/") and isinstance(v, (int, float))}
    protocol = {k: v for k, v in client.get_run(run_id).data.tags.items()
                if k.startswith("protocol.") and k != TAG_JSON}
    tags = {**(extra_tags or {}), "dataset": dataset, "ipc": str(ipc), "im_size": str(synset.meta["im_size"]),
            "content_sha256": synset.sha256(), "code_version": code_version(), **protocol, **accs}
    same = [v for v in client.search_model_versions(f"name = '{name}'")
            if v.tags.get("content_sha256") == tags["content_sha256"]
            and v.tags.get(TAG_ID, UNKNOWN) == protocol.get(TAG_ID, UNKNOWN)]
    if same:  # idempotent on content and protocol: a resumed run (or a rerun) that made the same set adds no version
        mv = min(same, key=lambda v: int(v.version))
        log.info("%s version %s already holds this set (sha256 %s) under this protocol: not registered again", name,
                 mv.version, tags["content_sha256"][:16])
        aliases = move_champion(client, name, also_run=run_id)
        held = sorted((a for a, v in aliases.items() if v == int(mv.version)), key=lambda a: (a != CHAMPION, a))
        entry = {"name": name, "version": int(mv.version), "alias": held[0] if held else None,
                 "existing": True}  # never deleted by this run's failure clean-up
        if created is not None:
            created.append(entry)
        return entry
    mv = client.create_model_version(name, source or f"runs:/{run_id}/{SYNTHETIC}", run_id=run_id, tags=tags,
                                     description=description)
    entry = {"name": name, "version": int(mv.version), "alias": None}
    if created is not None:
        created.append(entry)
    aliases = move_champion(client, name, also_run=run_id)
    held = sorted((a for a, v in aliases.items() if v == entry["version"]), key=lambda a: (a != CHAMPION, a))
    log.info("registered %s version %s under protocol %s (aliases: %s)", name, mv.version,
             protocol.get(TAG_ID, UNKNOWN), ", ".join(held) or "none")
    entry["alias"] = held[0] if held else None
    return entry


def register_distilled(client: MlflowClient, run_id: str, job, result: JobResult,
                       created: list[dict[str, Any]] | None = None, source: str | None = None) -> dict[str, Any]:
    """``register_set`` for a distill job's set, tagged with its method, lambda and proxy set."""
    return register_set(client, run_id, result.synset, result.metrics,
                        f"{job.name}: {job.method.name}, lambda={distill_tags(job, result.metrics)['lambda']}",
                        distill_tags(job, result.metrics), created, source)


def best_set(dataset: str, ipc: int, metric: str = DEFAULT_METRIC, uri: str | None = None,
             protocol: str | None = None) -> dict[str, Any]:
    """The best registered version of ``distilled-<dataset>-ipc<k>`` under one evaluation protocol.

    Args:
        dataset, ipc: the registered model ``distilled-<dataset>-ipc<k>``.
        metric: rank by this run metric (higher is better).
        uri: tracking URI.
        protocol: a protocol id (or a unique prefix), ``default`` (the one ``champion`` follows), or None: the
            only protocol the versions were scored under (several: ConfigError, never a ranking across them).

    Returns:
        {"name", "version", "run_id", "alias", "aliases", "metrics", "params", "source", "metric", "value",
        "std", "protocol": {"id", "summary"}, "default_protocol", "runner_up", "ties", "baseline"}
        (``_ranking.answer``).

    Raises:
        UnknownNameError: no such registered model.
        ConfigError: no version's run has ``metric`` (the message lists the metrics they have); the versions
            span several protocols and none was named; ``protocol`` names none of them.

    Example:
        >>> best_set("digits", 10, protocol="default")["protocol"]["summary"]
    """
    with mlflow_errors():
        client = client_for(resolve_uri(uri))
        name = set_model_name(dataset, ipc)
        by_protocol = _groups_with_metric(client, name, metric)
        pid = pick_protocol(client, name, protocol, by_protocol, metric)
        return answer(client, name, pid, by_protocol[pid], metric, dataset, ipc)


def best_per_protocol(dataset: str, ipc: int, metric: str = DEFAULT_METRIC,
                      uri: str | None = None) -> list[dict[str, Any]]:
    """``best_set`` for every protocol the versions were scored under, the default protocol first: one answer
    per protocol, never one ranking across them."""
    with mlflow_errors():
        client = client_for(resolve_uri(uri))
        name = set_model_name(dataset, ipc)
        by_protocol = _groups_with_metric(client, name, metric)
        default = default_protocol(client, name, by_protocol)
        order = sorted(by_protocol, key=lambda pid: (pid != default, -int(by_protocol[pid][0][1].version)))
        return [answer(client, name, pid, by_protocol[pid], metric, dataset, ipc) for pid in order]


def _groups_with_metric(client: MlflowClient, name: str, metric: str) -> dict[str, list]:
    """``_ranking.groups`` of a model that exists, or ConfigError listing the metrics its runs have."""
    require_versions(client, name)
    by_protocol = groups(client, name, metric)
    if not by_protocol:
        have = sorted({k for v in client.search_model_versions(f"name = '{name}'")
                       for k in _safe_metrics(client, v.run_id)})
        raise ConfigError(
            f"--metric: no finished version of {name} has {metric!r}; its runs have: {', '.join(have) or 'none'}"
        )
    return by_protocol


def _safe_metrics(client: MlflowClient, run_id: str) -> list[str]:
    try:
        return list(client.get_run(run_id).data.metrics)
    except MlflowException:
        return []



def _pick_version(client: MlflowClient, name: str, version: int | None, alias: str | None,
                  protocol: str | None = None):
    """The version asked for: a number, an alias, the champion of ``protocol``, else ``champion``, else the best
    version of the default protocol by the default metric (never a ranking across protocols)."""
    if sum(x is not None for x in (version, alias, protocol)) > 1:
        raise ConfigError("--version, --alias and --protocol: give one of them, not several")
    require_versions(client, name)
    if protocol is not None:
        by_protocol = groups(client, name, DEFAULT_METRIC)
        alias = champion_alias(pick_protocol(client, name, protocol, by_protocol))
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
    by_protocol = groups(client, name, DEFAULT_METRIC)
    if not by_protocol:
        raise UnknownNameError(f"{name} has no champion and no finished version to pick")
    return by_protocol[default_protocol(client, name, by_protocol)][0][1]


def download_source(client: MlflowClient, source: str, dst: str) -> Path:
    """Download a version's ``runs:/<run>/<path>`` source with *this* client (``models:/`` URIs would be
    resolved against MLflow's global registry URI, not ours)."""
    run_id, _, path = source.removeprefix("runs:/").lstrip("/").partition("/")
    if not source.startswith("runs:/") or not run_id or not path:
        raise CmiddError(f"version source {source!r} is not runs:/<run>/<path> (what cmidd registers)")
    return Path(client.download_artifacts(run_id, path, dst))


def pull(dataset: str, ipc: int, out: str | Path, version: int | None = None, alias: str | None = None,
         uri: str | None = None, protocol: str | None = None) -> Path:
    """Download a registered set into ``out``, verifying every checksum before anything lands there.

    Default: the version ``champion`` points at (the default protocol's champion); ``protocol`` (an id, a
    unique prefix, or ``default``) picks the champion of that protocol instead.

    ``out`` must be empty, missing, or hold a previously pulled set and nothing else (then it is replaced
    atomically): a folder holding any file a pull did not write is refused, so nothing of the user's is deleted.
    A ``registry.json`` beside the set records where it came from.

    Returns:
        ``out``, loadable with ``SyntheticSet.load(out)``.

    Raises:
        IntegrityError: a file is missing or does not match its sha256 (``out`` is left untouched).
        UnknownNameError: no such model, version or alias.
        ConfigError: ``out`` holds a file a pull did not write; more than one of ``version``, ``alias``, ``protocol``.
    """
    out = Path(out).expanduser()
    foreign = _not_pulled(out)
    if foreign:
        raise ConfigError(f"--out: {out} holds {foreign!r}, which cmidd pull did not write; nothing is replaced: "
                          f"choose an empty or new folder")
    with mlflow_errors():
        client = client_for(resolve_uri(uri))
        name = set_model_name(dataset, ipc)
        mv = _pick_version(client, name, version, alias, protocol)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.pull-", dir=out.parent))
        try:
            got = download_source(client, mv.source, str(tmp))
            _check_pulled(got, mv)
            record = {"name": name, "version": int(mv.version), "run_id": mv.run_id, "source": mv.source,
                      "protocol": {"id": version_protocol(mv), "summary": (mv.tags or {}).get(TAG_SUMMARY, "-")},
                      "tracking_uri": resolve_uri(uri), "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (got / PULL_RECORD).write_text(json.dumps(record, indent=2))
            (got / MARKER).write_text("A set pulled by cmidd pull; a later pull into this folder replaces it.\n")
            replace_dir(got, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


PULL_RECORD = "registry.json"
PULLED = {*TENSOR_FILES, MANIFEST, GRID, PULL_RECORD, MARKER}  # every file a pull writes


def _not_pulled(out: Path) -> str | None:
    """The first entry of ``out`` that a pull did not write (None: ``out`` is new, empty or a pulled set that a
    new pull may replace: it holds ``registry.json`` and nothing but a pull's files)."""
    if not out.exists():
        return None
    if not out.is_dir():
        return str(out)
    names = sorted(p.name for p in out.iterdir())
    if names and PULL_RECORD not in names:
        return names[0]
    return next((n for n in names if n not in PULLED or not (out / n).is_file()), None)


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


"""Re-score registered sets under one named protocol (the DD-Ranking idea: one protocol, every candidate).

``rescore_versions`` takes a protocol by id (its definition is the ``protocol.json`` tag that every scored
run and version carries), and for every registered set of ``distilled-<dataset>-ipc<k>`` that has no version
under that protocol yet (by content sha256): downloads and verifies the set, has it scored under the protocol by
the app's ``Scorer`` (an ``evaluate`` job of the runner; this module evaluates nothing itself), then records the
scores in a new run (kind ``evaluate``, experiment ``rescore-<model>``, tags ``protocol.*`` and
``cmidd.evaluates=<source>``, the source run's params with the ``eval.*`` ones replaced), copies the verified set
into that run and registers it from there (an MLflow server accepts a ``runs:/`` source only inside the run the
version names: ``upload_set``). The champions move as always (per protocol), and a random-real
baseline is logged under the protocol if none exists, so ``cmidd best --protocol ID`` can state the gain.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from ..data import load_dataset
from ..device import resolve_device
from ..errors import ConfigError, IntegrityError
from ..protocol import TAG_ID, TAG_JSON, Protocol
from ..store import Scorer
from ._baselines import log_random_real_draws
from ._client import DEFAULT_METRIC, client_for, log_metrics, metrics_at, mlflow_errors, open_run, resolve_uri
from ._ranking import baseline_table, require_versions, set_seeds, version_protocol
from ._sets import download_source, load_verified, register_set, set_model_name, upload_set
from ._tags import flat_params, run_tags

log = logging.getLogger(__name__)

TAG_EVALUATES = "cmidd.evaluates"  # on a re-scoring run: the runs:/ source of the set it scored


def find_protocol(client, protocol_id: str) -> Protocol:
    """The protocol whose id is ``protocol_id`` (or a unique prefix), read from a run that recorded it.

    Raises:
        ConfigError: no run of this store was scored under such a protocol, or the prefix is ambiguous.
    """
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.`{TAG_ID}` LIKE '{protocol_id}%'", max_results=500) if exps else []
    found = {r.data.tags[TAG_ID]: r.data.tags.get(TAG_JSON) for r in runs}
    if len(found) != 1 or not next(iter(found.values())):
        what = "no run of this store records it" if not found else f"it matches {', '.join(sorted(found))}"
        raise ConfigError(f"--protocol: must name one recorded evaluation protocol, but got {protocol_id!r} ({what})")
    return Protocol.from_json(next(iter(found.values())))


def rescore_versions(scorer: Scorer, dataset: str, ipc: int, protocol_id: str, versions: list[int] | None = None,
                     uri: str | None = None, seed: int = 0, device: str = "auto") -> list[dict[str, Any]]:
    """Score the registered sets of ``distilled-<dataset>-ipc<k>`` under the protocol ``protocol_id``.

    Args:
        scorer: the jobs that score the sets and the random-real draws (``cmidd.scoring.SCORER``).
        dataset, ipc: the registered model.
        protocol_id: a protocol id (or a unique prefix) recorded in this store.
        versions: only these version numbers (default: all).
        uri: tracking URI.
        seed: the evaluation seed (and the baseline's draw).
        device: ``cpu``, ``cuda`` or ``auto``.

    Returns:
        [{"from_version", "version", "run_id", "value"}] for the sets scored now (sets that already have a
        version under the protocol are skipped).

    Raises:
        UnknownNameError: no such model or version.
        ConfigError: the protocol is not recorded here, or is for another data set.
    """
    uri = resolve_uri(uri)
    with mlflow_errors():
        client = client_for(uri)
        name = set_model_name(dataset, ipc)
        require_versions(client, name)
        protocol = find_protocol(client, protocol_id)
        if protocol.dataset != dataset:
            raise ConfigError(f"--protocol: {protocol.id} scores {protocol.dataset!r}, not {dataset!r}")
        todo = _to_score(client, name, protocol.id, versions)
    out, data, own = [], None, None
    for mv in todo:
        with mlflow_errors():
            src_run = client.get_run(mv.run_id)
        own = own if own is not None else set_seeds(src_run)[1]
        root = src_run.data.params.get("data.root", "None")
        data = data or protocol_data(protocol, None if root == "None" else root)
        out.append(_score_one(scorer, client, mv, src_run, protocol, data, seed, device))
    with mlflow_errors():
        if todo:  # the random-real draws paired with the sets scored now (their evaluation seed), if missing
            have = set(baseline_table(client, dataset, ipc, protocol.id, DEFAULT_METRIC).get(seed, {}))
            log_random_real_draws(scorer, data, ipc, protocol, protocol.eval_cfg(), seed, f"rescore-{name}", own_draw=own,
                                  device=resolve_device(device), skip=have, client=client)
    return out


def protocol_data(protocol: Protocol, root: str | None):
    """The data ``protocol`` scored on, loaded from ``root`` and checked against the protocol's content digest.

    Raises:
        ConfigError: the data at ``root`` are not the protocol's (another folder's images, another split).
    """
    data = load_dataset(protocol.dataset, root=root, im_size=protocol.im_size,
                        seed=0 if protocol.split_seed is None else protocol.split_seed)
    if data.digest != protocol.data:
        raise ConfigError(f"data.root: the data of protocol {protocol.id} have content digest {protocol.data[:12]}, "
                          f"but got {data.digest[:12]} from {root or 'the built-in set'}: not the data it scored on")
    return data


def _to_score(client, name: str, protocol_id: str, versions: list[int] | None) -> list:
    """The newest version of each set content (by ``content_sha256``) with no version under the protocol."""
    all_versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version))
    if versions is not None:
        missing = sorted(set(versions) - {int(v.version) for v in all_versions})
        if missing:
            raise ConfigError(f"--versions: {name} has no version {', '.join(map(str, missing))}")
    done = {v.tags.get("content_sha256") for v in all_versions if version_protocol(v) == protocol_id}
    picked: dict[str, Any] = {}
    for v in all_versions:
        sha = v.tags.get("content_sha256")
        if (versions is None or int(v.version) in versions) and sha not in done and sha not in picked:
            picked[sha] = v
    return list(picked.values())


def _score_one(scorer: Scorer, client, mv, src_run, protocol: Protocol, data, seed: int,
               device: str) -> dict[str, Any]:
    """Download and verify the version's set, score it under ``protocol`` (``scorer``'s ``evaluate`` job), then log the scores in a new run and register the set from it (source: the
    original). Nothing is written to the store before the scores exist."""
    label = f"{mv.name} version {mv.version} ({mv.source})"
    eval_cfg = protocol.eval_cfg()
    with tempfile.TemporaryDirectory(prefix="cmidd-rescore-") as tmp:
        with mlflow_errors():
            folder = download_source(client, mv.source, tmp)
        synset = load_verified(folder, label)
        if synset.sha256() != mv.tags.get("content_sha256"):
            raise IntegrityError(f"{label}: content sha256 differs from the version's tag: refusing to score it")
        log.info("re-scoring %s under protocol %s (%s)", label, protocol.id, protocol.summary)
        metrics = scorer.set(folder, data, eval_cfg, seed, device, Path(tmp) / "job",
                             name=f"{mv.name}-v{mv.version}").metrics
    made = {k: mv.tags[k] for k in ("method", "lambda", "proxy_set", "ensemble_of", "ensemble_mode") if k in mv.tags}
    tags = run_tags("evaluate", protocol.dataset, ipc=str(synset.ipc), **made, **protocol.tags(),
                    **{TAG_EVALUATES: mv.source, "cmidd.rescored_version": f"{mv.name}/{mv.version}"})
    params = {k: v for k, v in src_run.data.params.items() if not k.startswith("eval.")}
    params |= flat_params({"eval": eval_cfg.model_dump(mode="json")}) | {"rescore.seed": str(seed)}
    with open_run(client, f"rescore-{mv.name}", f"{mv.name}-v{mv.version}-{protocol.id}", tags, params) as run:
        with mlflow_errors():
            log_metrics(client, run.run_id, metrics_at(0, metrics))
            upload_set(client, run.run_id, synset)  # the version's source must be inside the run that scored it
            entry = register_set(client, run.run_id, synset, metrics,
                                 f"version {mv.version} re-scored under protocol {protocol.id}", made, run.versions)
    return {"from_version": int(mv.version), "version": entry["version"], "run_id": run.run_id,
            "value": metrics[DEFAULT_METRIC]}

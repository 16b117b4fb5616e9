"""Ranking registered sets within one evaluation protocol: champions per protocol, the answer of ``best``.

Scores are compared only when one protocol (``cmidd.protocol``) produced them. Every version carries the tag
``protocol.id`` of the run that scored it (``unknown`` for versions registered before protocols were recorded);
the versions of one protocol form a group, ranked by a run metric (higher is better, ties keep the older).

Aliases of ``distilled-<dataset>-ipc<k>``:

    champion-<protocol id>   the best version under that protocol, one alias per protocol
    champion                 the champion of the model's default protocol: the registered model's tag
                             ``protocol.default``, set to the protocol of its first registered version
                             (``set_default_protocol`` changes it)

So a set scored under a cheap search protocol never takes ``champion`` from one scored under the data set's
reference protocol; it becomes ``champion-<its protocol>`` only.
"""

from __future__ import annotations

import math
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..errors import ConfigError, UnknownNameError
from ..gain import paired_gain, spread
from ..lam import set_label_of_params
from ..names import CROSS_ARCH_MEAN
from ..protocol import TAG_ID, TAG_SUMMARY, UNKNOWN
from ._client import CHAMPION, DEFAULT_METRIC

TAG_DEFAULT = "protocol.default"  # registered-model tag: the protocol ``champion`` follows
BASELINE = "random-real"
TAG_DRAW, TAG_EVAL_SEED = "baseline.draw", "baseline.eval_seed"  # a random-real run's draw and evaluation seed


def champion_alias(protocol_id: str) -> str:
    """``champion-<protocol id>``: the alias of the best version under that protocol."""
    return f"{CHAMPION}-{protocol_id}"


def version_protocol(mv) -> str:
    """The protocol id a version was scored under (``unknown`` when it predates protocol tags)."""
    return (mv.tags or {}).get(TAG_ID, UNKNOWN)


def ranked(client: MlflowClient, name: str, metric: str = DEFAULT_METRIC, protocol: str | None = None,
           also_run: str | None = None) -> list[tuple[float, Any, Any]]:
    """Versions of ``name`` under ``protocol`` (None: all, for grouping only) joined with their runs, best first.

    Only versions of FINISHED, active runs count (plus ``also_run``, registering now); registry versions carry
    no metrics of their own, the run's ``metric`` ranks them.

    Returns:
        [(value, ModelVersion, Run)].
    """
    out = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        if protocol is not None and version_protocol(mv) != protocol:
            continue
        try:
            run = client.get_run(mv.run_id)
        except MlflowException:
            continue  # run deleted from the store
        ok = run.info.status == "FINISHED" or run.info.run_id == also_run
        if ok and run.info.lifecycle_stage == "active" and metric in run.data.metrics:
            out.append((run.data.metrics[metric], mv, run))
    out.sort(key=lambda t: (-t[0], int(t[1].version)))
    return out


def groups(client: MlflowClient, name: str, metric: str = DEFAULT_METRIC,
           also_run: str | None = None) -> dict[str, list[tuple[float, Any, Any]]]:
    """``ranked`` split by protocol id: {protocol id: [(value, version, run)], best first}."""
    out: dict[str, list] = {}
    for item in ranked(client, name, metric, None, also_run):
        out.setdefault(version_protocol(item[1]), []).append(item)
    return out


def default_protocol(client: MlflowClient, name: str, by_protocol: dict[str, list]) -> str | None:
    """The protocol ``champion`` follows: the model's tag ``protocol.default`` if it still has versions, else
    the protocol of the oldest version (a known protocol before ``unknown``); None without versions."""
    tag = client.get_registered_model(name).tags.get(TAG_DEFAULT)
    if tag in by_protocol:
        return tag
    oldest = sorted(((pid == UNKNOWN, min(int(mv.version) for _, mv, _ in items), pid)
                     for pid, items in by_protocol.items()))
    return oldest[0][2] if oldest else None


def move_champion(client: MlflowClient, name: str, metric: str = DEFAULT_METRIC,
                  also_run: str | None = None) -> dict[str, int]:
    """Point ``champion-<id>`` at the best version of every protocol, ``champion`` at the default protocol's.

    The default protocol is recorded on the model (tag ``protocol.default``) the first time. Two jobs
    registering at once may both move the aliases; each re-reads the versions after setting them and corrects
    a stale choice once.

    Returns:
        {alias: version} as set.
    """
    aliases: dict[str, int] = {}
    for _ in range(2):
        by_protocol = groups(client, name, metric, also_run)
        default = default_protocol(client, name, by_protocol)
        if default is None:
            return {}
        if client.get_registered_model(name).tags.get(TAG_DEFAULT) != default:
            client.set_registered_model_tag(name, TAG_DEFAULT, default)
        aliases = {champion_alias(pid): int(items[0][1].version) for pid, items in by_protocol.items()}
        aliases[CHAMPION] = aliases[champion_alias(default)]
        for alias, version in aliases.items():
            client.set_registered_model_alias(name, alias, str(version))
        if int(client.get_registered_model(name).aliases.get(CHAMPION, aliases[CHAMPION])) == aliases[CHAMPION]:
            break
    return aliases


def set_default_protocol(client: MlflowClient, name: str, protocol: str, metric: str = DEFAULT_METRIC) -> int:
    """Make ``protocol`` the one ``champion`` follows; returns the version ``champion`` now points at."""
    pid = pick_protocol(client, name, protocol, groups(client, name, metric), metric)
    client.set_registered_model_tag(name, TAG_DEFAULT, pid)
    return move_champion(client, name, metric)[CHAMPION]


def pick_protocol(client: MlflowClient, name: str, asked: str | None, by_protocol: dict[str, list],
                  metric: str = DEFAULT_METRIC) -> str:
    """The protocol id to answer for: ``asked`` (an id, a unique prefix of one, or ``default``), or the only one.

    Raises:
        ConfigError: ``asked`` is None and the versions span several protocols (never ranked together), or
            ``asked`` matches no protocol (or several).
    """
    if not by_protocol:
        raise ConfigError(f"--metric: no finished version of {name} has {metric!r}")
    if asked == "default":
        return default_protocol(client, name, by_protocol)
    if asked is None:
        if len(by_protocol) == 1:
            return next(iter(by_protocol))
        default = default_protocol(client, name, by_protocol)
        ids = ", ".join(f"{pid}{' (default)' if pid == default else ''}"
                        for pid in sorted(by_protocol, key=lambda p: p != default))
        raise ConfigError(f"--protocol: {name} has versions scored under {len(by_protocol)} evaluation protocols "
                          f"({ids}) and they are never ranked together; pick one with --protocol ID or default")
    hits = [pid for pid in by_protocol if pid.startswith(asked)]
    if len(hits) != 1:
        raise ConfigError(f"--protocol: must name one protocol of {name} ({', '.join(by_protocol)}), "
                          f"but got {asked!r}")
    return hits[0]


# ----------------------------------------------------------------------------------------------------
# the answer of ``best``


def describe(mv, run, aliases: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of a version: name, version, run_id, alias (``champion`` first), aliases, metrics,
    params, source."""
    held = sorted((a for a, v in aliases.items() if int(v) == int(mv.version)), key=lambda a: (a != CHAMPION, a))
    return {
        "name": mv.name, "version": int(mv.version), "run_id": mv.run_id, "alias": held[0] if held else None,
        "aliases": held, "metrics": dict(sorted(run.data.metrics.items())),
        "params": dict(sorted(run.data.params.items())), "source": mv.source,
    }


def _std(run, metric: str) -> float:
    return float(run.data.metrics.get(metric.replace("acc/", "acc_std/", 1), 0.0))


def answer(client: MlflowClient, name: str, protocol: str, items: list[tuple[float, Any, Any]], metric: str,
           dataset: str, ipc: int) -> dict[str, Any]:
    """The best version under ``protocol`` with the protocol, the runner-up, ties and the random-real gain.

    Ties are the other versions within the seed std of the best (the root of the two stds squared and summed;
    with one seed, exact equality only).

    Returns:
        ``describe(best)`` plus ``label`` (``dm``, ``dm+cmi``, ...), ``mean_over`` (the architectures in a mean
        over architectures, else None), ``protocol`` {id, summary}, ``default_protocol`` (bool), ``runner_up`` (a
        short entry or None), ``ties`` [short entries], ``baseline`` (``gain_over_random_real``, or None).
    """
    model = client.get_registered_model(name)
    value, mv, run = items[0]
    std = _std(run, metric)
    out = describe(mv, run, model.aliases)

    def short(item) -> dict[str, Any]:
        v, m, r = item
        return {"version": int(m.version), "run_id": m.run_id, "value": v, "std": _std(r, metric),
                "gap": value - v, "method": set_label_of_params(r.data.params, m.tags.get("method"))}

    ties = []
    for item in items[1:]:
        band = math.hypot(std, _std(item[2], metric))
        if value - item[0] <= band or math.isclose(value, item[0], abs_tol=1e-12):
            ties.append(short(item))
    summary = mv.tags.get(TAG_SUMMARY, "scored before protocols were recorded" if protocol == UNKNOWN else "-")
    archs = sorted(k.removeprefix("acc/") for k in run.data.metrics
                   if k.startswith("acc/") and k not in (CROSS_ARCH_MEAN, "acc/ensemble"))
    label = set_label_of_params(run.data.params, mv.tags.get("method"))
    return {**out, "label": label, "metric": metric, "value": value, "std": std,
            "mean_over": archs if metric == CROSS_ARCH_MEAN else None,
            "protocol": {"id": protocol, "summary": summary},
            "default_protocol": model.tags.get(TAG_DEFAULT) == protocol,
            "runner_up": short(items[1]) if len(items) > 1 else None, "ties": ties,
            "baseline": gain_over_random_real(client, dataset, ipc, protocol, metric, items)}


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def set_seeds(run) -> tuple[int | None, int | None]:
    """(evaluation seed, own initialization draw) of the run that scored a set.

    The evaluation seed is the param ``rescore.seed`` of a re-scoring run, else ``seed``. The own draw is
    ``seed`` for a real-initialized distilled set without multi-formation (its images started as
    ``random_real_set(data, ipc, seed)``), else None (noise init, IDC, ensembles, sets from folders).
    """
    p = run.data.params
    seed = _int(p.get("seed"))
    real = p.get("method.name") and p.get("method.init", "real") == "real" and p.get("method.factor", "1") == "1"
    return _int(p.get("rescore.seed", p.get("seed"))), seed if real else None


def baseline_table(client: MlflowClient, dataset: str, ipc: int, protocol: str,
                   metric: str = DEFAULT_METRIC) -> dict[int, dict[int, tuple[float, str]]]:
    """The random-real scores under ``protocol``: {evaluation seed: {draw seed: (value, run id)}}.

    From finished runs of kind ``baseline`` (tags ``baseline.eval_seed`` and ``baseline.draw``; a run logged
    before them: its param ``seed`` for both) and from runs that scored random-real beside their set (metric
    ``baseline/random-real/<metric>``: draw and evaluation seed are the run's ``seed``); the newest run of each
    (evaluation seed, draw). Empty for the ``unknown`` protocol.
    """
    if protocol == UNKNOWN:
        return {}
    exps = [e.experiment_id for e in client.search_experiments()]
    query = (f"tags.`{TAG_ID}` = '{protocol}' and tags.dataset = '{dataset}' and tags.ipc = '{ipc}' "
             "and attributes.status = 'FINISHED'")
    runs = client.search_runs(exps, query, order_by=["attributes.start_time DESC"], max_results=1000) if exps else []
    table: dict[int, dict[int, tuple[float, str]]] = {}
    for r in runs:
        own = r.data.tags.get("kind") == "baseline" and r.data.tags.get("baseline") == BASELINE
        seed = _int(r.data.params.get("seed"))
        if own and metric in r.data.metrics:
            e, d = _int(r.data.tags.get(TAG_EVAL_SEED, seed)), _int(r.data.tags.get(TAG_DRAW, seed))
            v = r.data.metrics[metric]
        elif not own and f"baseline/{BASELINE}/{metric}" in r.data.metrics:
            e = d = seed
            v = r.data.metrics[f"baseline/{BASELINE}/{metric}"]
        else:
            continue
        if e is not None and d is not None:
            table.setdefault(e, {}).setdefault(d, (v, r.info.run_id))
    return table


def paired_baseline(table: dict[int, dict[int, tuple[float, str]]], value: float, run) -> dict[str, Any] | None:
    """The gain of a set (``value``, scored by ``run``) over the random-real draws of ``table`` scored with its
    evaluation seed (``cmidd.gain.paired_gain``, plus ``eval_seed`` and each draw's ``run_id``); None without
    such a draw."""
    eval_seed, own = set_seeds(run)
    draws = table.get(eval_seed, {}) if eval_seed is not None else {}
    if not draws:
        return None
    g = paired_gain(value, {d: v for d, (v, _) in draws.items()}, own)
    for row in g["draws"]:
        row["run_id"] = draws[row["draw"]][1]
    return {"eval_seed": eval_seed, **g}


def gain_over_random_real(client: MlflowClient, dataset: str, ipc: int, protocol: str, metric: str,
                          items: list[tuple[float, Any, Any]]) -> dict[str, Any] | None:
    """The gain over random-real of the versions ``items`` (best first) under ``protocol``, in accuracy points.

    Each version's gain is paired (``paired_baseline``: the random-real draws scored with its evaluation seeds,
    its own initialization draw among them when logged) and has its spread over the draws. The champion is the
    best of ``len(items)`` versions, so its own gain is selected, biased upward; with more than one version the
    headline ``gain`` is the mean over all versions' gains (``over: versions``), not the champion's.

    Returns:
        {name, gain, gain_std, n, over ("draws": the champion's own, one version; "versions"), selected_from,
        champion (its ``paired_baseline``, or None), versions [{version, label, gain, gain_std, n}]}, or None when no
        version has a paired random-real draw.
    """
    table = baseline_table(client, dataset, ipc, protocol, metric)
    per = [(int(m.version), set_label_of_params(r.data.params, m.tags.get("method")), paired_baseline(table, v, r))
           for v, m, r in items]
    champion = per[0][2]
    scored = [(v, label, b) for v, label, b in per if b is not None]
    if not scored:
        return None
    versions = [{"version": v, "label": label, "gain": b["gain"], "gain_std": b["gain_std"], "n": b["n"]}
                for v, label, b in scored]
    if len(items) == 1:
        head = {"gain": champion["gain"], "gain_std": champion["gain_std"], "n": champion["n"], "over": "draws"}
    else:
        s = spread([b["gain"] for _, _, b in scored])
        head = {"gain": s["mean"], "gain_std": s["std"], "n": s["n"], "over": "versions"}
    return {"name": BASELINE, **head, "selected_from": len(items), "champion": champion, "versions": versions}


def require_versions(client: MlflowClient, name: str) -> None:
    """Raise ``UnknownNameError`` (listing the registered sets) when ``name`` is not a registered model."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models("name LIKE 'distilled-%'"))
        raise UnknownNameError(
            f"no registered model {name!r} in this store; registered: {', '.join(known) or 'none'}"
        ) from None

"""Scores are ranked only within one evaluation protocol, against a real sqlite MLflow store and a real search.

The scenario of issue 24: a set scored under protocol A (like the demo's) is registered first, then a tiny
search's trial scored under a cheaper protocol B scores higher. Before protocols, the search's set became
``champion`` and ``cmidd pull`` handed it out. Now: ``champion`` stays on A's set, B's set is
``champion-<B>`` only, ``best`` refuses to rank across the two and answers per protocol, and a search that
declares protocol A for registration re-scores its set under A before it may compete there.

Toy sizes: 8x8 digits, IPC 2, ConvNetD1 width 16; set A starts from noise with a vanishing image lr (chance
level), the search's set from real images (far above it), so the cross-protocol ranking is not in doubt.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mlflow")

from cmidd import tracking as T  # noqa: E402
from cmidd.config import EvalCfg, load_search, parse_job  # noqa: E402
from cmidd.errors import ConfigError  # noqa: E402
from cmidd.evaluate import evaluate  # noqa: E402
from cmidd.protocol import TAG_ID, Protocol, protocol_of_job  # noqa: E402
from cmidd.runner import random_real_set  # noqa: E402
from cmidd.synthetic import SyntheticSet  # noqa: E402

from conftest import tiny_distill  # noqa: E402

MODEL = "distilled-digits-ipc2"
EVAL_A = {"archs": ["ConvNetD1"], "num_eval": 2, "epochs": 3, "dsa": False}  # the "demo" protocol
EVAL_B = {"archs": ["ConvNetD1"], "num_eval": 1, "epochs": 30, "dsa": False}  # the search's: one seed


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    T.client_for(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def with_a(tmp_path, monkeypatch, template_db, digits):
    """A store holding set A (chance-level, protocol A) and the random-real baseline under protocol A."""
    monkeypatch.chdir(tmp_path)  # the sqlite store's artifacts land in ./mlruns
    shutil.copy(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = parse_job(tiny_distill(tmp_path / "a", name="set-a", method__init="noise", method__iterations=1,
                                 method__lr_img=1e-6, eval=dict(EVAL_A), output__checkpoint_every=0))
    a = T.tracked_run(job, uri, data=digits)
    protocol = protocol_of_job(job, digits)
    base = random_real_set(digits, 2, 0)
    res = evaluate(*base.training_set(), digits, job.eval, 0)
    baseline_run = T.log_baseline("random-real", res.metrics(), protocol, 2, job.eval, 0, "baselines", uri, base)
    return dict(uri=uri, run=a, protocol=protocol, baseline=res.metrics(), baseline_run=baseline_run,
                client=T.client_for(uri), root=tmp_path)


def _search(root: Path, uri: str, **extra) -> dict:
    """One real trial (Ray Tune + Optuna, no ASHA) of a real-init DM job under protocol B; its set registered."""
    from cmidd.app import run_search

    base = tiny_distill(root / "s", name="trial", method__iterations=2, eval=dict(EVAL_B),
                        output__checkpoint_every=0)
    mapping = {"name": "search-b", "base": base, "params": {"method.lr_img": {"choice": [1.0]}},
               "search": {"num_samples": 1, "seed": 0, "asha": None}, "register_top_k": 1,
               "storage": str(root / "store"), **extra}
    (root / "space.yaml").write_text(yaml.safe_dump(mapping))
    return run_search(load_search(root / "space.yaml"), uri, progress=False)


def test_search_protocol_never_takes_the_champion_of_another(with_a, ray_local, tmp_path, capsys, digits):
    from cmidd.cli import main

    c, uri, pa = with_a["client"], with_a["uri"], with_a["protocol"]
    summary = _search(tmp_path, uri)
    (reg,) = summary["registered"]
    assert reg["rescored"] is False  # scored under the protocol it declares (the base job's eval block)
    pb = Protocol.of(EvalCfg(**EVAL_B), digits)
    assert reg["protocol"] == pb.id != pa.id

    versions = {int(v.version): v for v in c.search_model_versions(f"name = '{MODEL}'")}
    va, vb = versions[1], versions[reg["version"]]
    assert va.run_id == with_a["run"].run_id and va.tags[TAG_ID] == pa.id and vb.tags[TAG_ID] == pb.id
    acc = {v: c.get_run(versions[v].run_id).data.metrics["acc/cross_arch_mean"] for v in versions}
    assert acc[int(vb.version)] > acc[1] + 0.1  # the old rule (one ranking) would crown the search's set

    aliases = c.get_registered_model(MODEL).aliases
    assert int(aliases["champion"]) == 1 and int(aliases[f"champion-{pa.id}"]) == 1
    assert int(aliases[f"champion-{pb.id}"]) == int(vb.version)

    with pytest.raises(ConfigError, match=r"--protocol: .* 2 evaluation protocols .* never ranked together"):
        T.best_set("digits", 2, uri=uri)
    best_a = T.best_set("digits", 2, uri=uri, protocol="default")
    assert best_a["version"] == 1 and best_a["protocol"] == {"id": pa.id, "summary": pa.summary}
    assert best_a["runner_up"] is None and best_a["ties"] == [] and best_a["aliases"][0] == "champion"
    gain = best_a["baseline"]  # one version, one draw logged with its eval seed: no spread, said so
    assert gain["over"] == "draws" and gain["n"] == 1 and gain["gain_std"] is None
    assert [d["run_id"] for d in gain["champion"]["draws"]] == [with_a["baseline_run"]]
    assert gain["champion"]["own_draw"] is False  # set A started from noise: no init draw to pair with
    assert gain["gain"] == pytest.approx(100 * (acc[1] - with_a["baseline"]["acc/cross_arch_mean"]))

    # the search logged the random-real draws paired with its set under B: its own init draw and two more
    best_b = T.best_set("digits", 2, uri=uri, protocol=pb.id[:6])  # a unique prefix names it
    assert best_b["version"] == int(vb.version) and best_b["default_protocol"] is False
    bb = best_b["baseline"]
    assert bb["over"] == "draws" and bb["n"] == 3 and bb["gain_std"] is not None and bb["champion"]["own_draw"]
    assert {c.get_run(d["run_id"]).data.tags["kind"] for d in bb["champion"]["draws"]} == {"baseline"}

    # the CLI: --json refuses across protocols (exit 2, one line); text answers per protocol; pull the champion
    args = ["--dataset", "digits", "--ipc", "2", "--tracking-uri", uri]
    capsys.readouterr()
    assert main(["best", "--json", *args]) == 2
    out = capsys.readouterr().out.strip()  # --json: the error is one JSON object on stdout, same exit code
    assert len(out.splitlines()) == 1 and "never ranked together" in json.loads(out)["error"]
    assert main(["best", *args]) == 0
    text = capsys.readouterr().out
    assert f"protocol  {pa.id} (default): {pa.summary}" in text and f"protocol  {pb.id}: {pb.summary}" in text
    assert text.index(pa.id) < text.index(pb.id) and "gain over random-real: " in text
    assert main(["best", "--json", "--protocol", pb.id, *args]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["protocol"]["id"] == pb.id and "gain" in got["baseline"] and "runner_up" in got
    assert main(["best", "--protocol", "nope", *args]) == 2

    assert main(["pull", *args, "--out", str(tmp_path / "p")]) == 0
    assert SyntheticSet.load(tmp_path / "p").sha256() == va.tags["content_sha256"]  # the default's champion
    assert "scored under protocol " + pa.id in capsys.readouterr().out
    T.pull("digits", 2, tmp_path / "pb", uri=uri, protocol=pb.id)
    assert json.loads((tmp_path / "pb" / "registry.json").read_text())["protocol"]["id"] == pb.id

    assert main(["best", "--protocol", pb.id, "--make-default", *args]) == 0  # champion follows B now
    assert int(c.get_registered_model(MODEL).aliases["champion"]) == int(vb.version)


def test_search_rescores_its_top_under_the_declared_protocol(with_a, ray_local, tmp_path):
    c, uri, pa = with_a["client"], with_a["uri"], with_a["protocol"]
    summary = _search(tmp_path, uri, register_eval=dict(EVAL_A))
    (reg,) = summary["registered"]
    assert reg["rescored"] is True and reg["protocol"] == pa.id
    parent = c.get_run(summary["parent_run_id"]).data.tags
    assert parent["register.protocol.id"] == pa.id and parent["register.protocol.summary"] == pa.summary

    mv = c.get_model_version(MODEL, str(reg["version"]))
    trial = summary["best"]["run_id"]
    # the source lies inside the version's own run (what an MLflow server accepts), a copy of the trial's set
    assert mv.source == f"runs:/{mv.run_id}/synthetic" and mv.run_id == reg["scored_by"] != trial
    assert mv.tags["content_sha256"] == T.load_set("digits", 2, version=int(mv.version), uri=uri).sha256()
    scorer = c.get_run(mv.run_id)
    assert scorer.data.tags["kind"] == "evaluate" and scorer.data.tags[TAG_ID] == pa.id
    assert scorer.data.tags["cmidd.evaluates"] == f"runs:/{trial}/synthetic" and scorer.info.status == "FINISHED"
    assert scorer.data.params["eval.num_eval"] == "2" and "acc_std/cross_arch_mean" in scorer.data.metrics
    assert "mlflow.parentRunId" not in scorer.data.tags  # the parent's children stay its trials

    # both sets now compete under protocol A, honestly: one ranking, the runner-up named
    best = T.best_set("digits", 2, uri=uri)  # one protocol: no --protocol needed
    accs = {v.version: c.get_run(v.run_id).data.metrics["acc/cross_arch_mean"]
            for v in c.search_model_versions(f"name = '{MODEL}'")}
    assert best["value"] == max(accs.values()) and best["protocol"]["id"] == pa.id
    assert best["runner_up"]["value"] == min(accs.values())
    assert int(c.get_registered_model(MODEL).aliases["champion"]) == best["version"]
    # A's draw 0 was there: the search logged only the draws its set still lacked (1, 2; eval seed 0)
    baselines = c.search_runs([e.experiment_id for e in c.search_experiments()], "tags.kind = 'baseline'")
    assert sorted(r.data.tags["baseline.draw"] for r in baselines) == ["0", "1", "2"]
    assert {r.data.tags["baseline.eval_seed"] for r in baselines} == {"0"}
    got = SyntheticSet.load(T.pull("digits", 2, tmp_path / "p", version=reg["version"], uri=uri))
    assert got.sha256() == mv.tags["content_sha256"]


def test_ties_and_runner_up_within_one_protocol(tmp_path, monkeypatch, template_db, digits):
    monkeypatch.chdir(tmp_path)
    shutil.copy(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for seed in (0, 1, 2):
        T.tracked_run(parse_job(tiny_distill(tmp_path / f"s{seed}", seed=seed, name=f"t{seed}", eval=dict(EVAL_A),
                                             output__checkpoint_every=0)), uri, data=digits)
    best = T.best_set("digits", 2, uri=uri)
    c = T.client_for(uri)
    runs = sorted(((c.get_run(v.run_id).data.metrics, int(v.version))
                   for v in c.search_model_versions(f"name = '{MODEL}'")),
                  key=lambda t: (-t[0]["acc/cross_arch_mean"], t[1]))
    (m0, v0), (m1, v1) = runs[0], runs[1]
    assert best["version"] == v0 and best["runner_up"]["version"] == v1
    assert best["runner_up"]["gap"] == pytest.approx(m0["acc/cross_arch_mean"] - m1["acc/cross_arch_mean"])
    for m, v in runs[1:]:  # a tie: within the two seed stds combined
        band = (m0["acc_std/cross_arch_mean"] ** 2 + m["acc_std/cross_arch_mean"] ** 2) ** 0.5
        tied = m0["acc/cross_arch_mean"] - m["acc/cross_arch_mean"] <= band
        assert (v in [t["version"] for t in best["ties"]]) == tied
    assert best["baseline"] is None  # no baseline under this protocol: said, not invented


def test_cmidd_evaluate_rescores_every_set_under_a_named_protocol(with_a, tmp_path, digits, capsys):
    from cmidd.cli import main

    c, uri, pa = with_a["client"], with_a["uri"], with_a["protocol"]
    job_b = parse_job(tiny_distill(tmp_path / "b", name="set-b", method__iterations=2, eval=dict(EVAL_B),
                                   output__checkpoint_every=0))
    b = T.tracked_run(job_b, uri, data=digits)
    pb = protocol_of_job(job_b, digits)
    assert int(c.get_registered_model(MODEL).aliases["champion"]) == 1  # B's set: champion of B only

    args = ["--dataset", "digits", "--ipc", "2", "--tracking-uri", uri]
    capsys.readouterr()
    assert main(["evaluate", "--protocol", pa.id[:6], *args]) == 0
    out = capsys.readouterr().out
    assert "version 2 scored under" in out and "registered as version 3" in out and f"protocol  {pa.id}" in out
    v3 = c.get_model_version(MODEL, "3")
    assert v3.source == f"runs:/{v3.run_id}/synthetic" and v3.run_id != b.run_id and v3.tags[TAG_ID] == pa.id
    assert v3.tags["content_sha256"] == b.result.synset.sha256() and v3.tags["method"] == "dm"
    scorer = c.get_run(v3.run_id)
    assert scorer.data.tags["kind"] == "evaluate" and scorer.data.tags[T.TAG_EVALUATES] == f"runs:/{b.run_id}/synthetic"
    assert scorer.data.params["eval.num_eval"] == "2" and scorer.data.params["method.iterations"] == "2"

    # under A, both sets now compete: one ranking there, the runner-up named
    best = T.best_set("digits", 2, uri=uri, protocol=pa.id)
    accs = {v: c.get_run(c.get_model_version(MODEL, str(v)).run_id).data.metrics["acc/cross_arch_mean"]
            for v in (1, 3)}
    assert best["version"] == max(accs, key=accs.get) and best["runner_up"]["version"] == min(accs, key=accs.get)
    assert int(c.get_registered_model(MODEL).aliases["champion"]) == best["version"]
    assert int(c.get_registered_model(MODEL).aliases[f"champion-{pb.id}"]) == 2
    draws = best["baseline"]["champion"]["draws"]  # A's draw 0 reused, not scored again; draws 1, 2 added
    assert [d["draw"] for d in draws] == [0, 1, 2] and draws[0]["run_id"] == with_a["baseline_run"]
    assert best["baseline"]["over"] == "versions" and best["baseline"]["selected_from"] == 2

    assert main(["evaluate", "--protocol", pa.id, *args]) == 0  # nothing left to score: no new version
    assert "already has a version" in capsys.readouterr().out
    assert len(c.search_model_versions(f"name = '{MODEL}'")) == 3
    assert main(["evaluate", "--protocol", "ffffffffff", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--protocol: must name one recorded evaluation protocol" in err
    assert main(["evaluate", "--protocol", pa.id, "--versions", "9", *args]) == 2
    assert "--versions: distilled-digits-ipc2 has no version 9" in capsys.readouterr().err


def test_a_version_without_protocol_tags_is_ranked_only_with_its_like(with_a, tmp_path, digits):
    """Versions registered before protocols were recorded form the protocol ``unknown``."""
    from cmidd.protocol import TAG_JSON, TAG_SUMMARY, UNKNOWN

    c, uri, pa = with_a["client"], with_a["uri"], with_a["protocol"]
    job = parse_job(tiny_distill(tmp_path / "old", name="old", eval=dict(EVAL_A), output__checkpoint_every=0))
    old = T.tracked_run(job, uri, data=digits, register=False)
    for key in (TAG_ID, TAG_SUMMARY, TAG_JSON):  # as an older cmidd logged it
        c.delete_tag(old.run_id, key)
    entry = T.register_distilled(c, old.run_id, job, old.result)
    mv = c.get_model_version(MODEL, str(entry["version"]))
    assert TAG_ID not in mv.tags and entry["alias"] == f"champion-{UNKNOWN}"
    aliases = c.get_registered_model(MODEL).aliases
    assert int(aliases["champion"]) == 1 and int(aliases[f"champion-{UNKNOWN}"]) == entry["version"]
    answers = T.best_per_protocol("digits", 2, uri=uri)
    assert [a["protocol"]["id"] for a in answers] == [pa.id, UNKNOWN]
    assert answers[1]["protocol"]["summary"] == "scored before protocols were recorded"
    assert answers[1]["baseline"] is None  # no baseline can share an unknown protocol

"""Ensembles of distilled sets: the pure combination rules, and search / registry sources through real MLflow."""

from __future__ import annotations

import json

import pytest
import torch

from cmidd.config import EvalCfg, parse_job
from cmidd.ensemble import combine_sets
from cmidd.errors import ConfigError, DataError
from cmidd.synthetic import SyntheticSet

from conftest import tiny_distill


def _set(ipc: int, offset: float, c_num: int = 2, **meta) -> SyntheticSet:
    """Images whose single pixel encodes (offset, class, index) so that the test can see where each came from."""
    vals = torch.tensor([offset + 10 * c + i for c in range(c_num) for i in range(ipc)], dtype=torch.float32)
    m = {"dataset": "toy", "num_classes": c_num, "channels": 1, "im_size": 1, "ipc": ipc, "mean": [0.0],
         "std": [1.0], **meta}
    return SyntheticSet(vals.view(-1, 1, 1, 1), torch.arange(c_num).repeat_interleave(ipc), m)


def test_concat_stacks_each_class_from_every_source_in_order():
    out = combine_sets([_set(1, 100), _set(2, 200)], "concat", sources=["a", "b"])
    assert out.ipc == 3 and out.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert out.images.flatten().tolist() == [100, 200, 201, 110, 210, 211]
    assert out.meta["ensemble_of"] == ["a", "b"] and out.meta["method"] == "ensemble-concat"


def test_per_class_best_takes_each_class_from_its_best_source_and_keeps_ipc():
    sets = [_set(2, 100, c_num=3), _set(2, 200, c_num=3), _set(2, 300, c_num=3)]
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.9, 0.3, 0.4]])  # class 0 ties: source 0 wins
    out = combine_sets(sets, "per-class-best", scores)
    assert out.ipc == 2 and out.meta["class_source"] == [0, 1, 0]
    assert out.images.flatten().tolist() == [100, 101, 210, 211, 120, 121]
    assert out.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_bad_combinations_are_refused():
    with pytest.raises(DataError, match="one IPC"):
        combine_sets([_set(1, 0), _set(2, 0)], "per-class-best", torch.zeros(2, 2))
    with pytest.raises(DataError, match="class_scores"):
        combine_sets([_set(1, 0), _set(1, 0)], "per-class-best")
    with pytest.raises(DataError, match="must match"):
        combine_sets([_set(1, 0), _set(1, 0, dataset="other")], "concat")
    with pytest.raises(ConfigError, match="--mode"):
        combine_sets([_set(1, 0)], "vote")


# -- the ensemble job kind (cmidd.runner, no MLflow) -----------------------------------------------------


def _saved_sets(tmp_path, digits, ipcs=(2, 2)):
    from cmidd.runner import random_real_set

    folders = []
    for i, ipc in enumerate(ipcs):
        random_real_set(digits, ipc, seed=i).save(tmp_path / f"s{i}")
        folders.append(str(tmp_path / f"s{i}"))
    return folders


def _ensemble_job(tmp_path, sets, **kw):
    return parse_job({"kind": "ensemble", "name": "ens", "data": {"name": "digits"}, "sets": sets,
                      "eval": {"archs": ["ConvNetD1"], "num_eval": 1, "epochs": 1, "dsa": False},
                      "output": {"dir": str(tmp_path / "out")}, **kw})


def test_the_ensemble_job_combines_saved_sets_through_the_runner(tmp_path, digits):
    from cmidd.runner import RUNNERS, run_job

    assert "ensemble" in RUNNERS
    sets = _saved_sets(tmp_path, digits)
    r = run_job(_ensemble_job(tmp_path, sets, sources=["a", "b"]), data=digits)
    parts = [SyntheticSet.load(f) for f in sets]
    want = torch.cat([p.images.view(10, 2, 1, 8, 8) for p in parts], dim=1).reshape(40, 1, 8, 8)
    saved = SyntheticSet.load(tmp_path / "out" / "synthetic")  # verified on load
    assert r.kind == "ensemble" and r.synset.ipc == 4 and torch.equal(saved.images, want)
    assert saved.meta["ensemble_of"] == ["a", "b"] and saved.meta["method"] == "ensemble-concat"
    assert 0.0 <= r.metrics["acc/cross_arch_mean"] <= 1.0
    assert json.loads((tmp_path / "out" / "result.json").read_text())["kind"] == "ensemble"


def test_the_ensemble_job_refuses_bad_sources_before_writing(tmp_path, digits):
    from cmidd.errors import CmiddError
    from cmidd.runner import check_job_data

    with pytest.raises(ConfigError, match="sources: one per set"):
        _ensemble_job(tmp_path, _saved_sets(tmp_path, digits), sources=["a"])
    with pytest.raises(ConfigError, match="sets: must be distinct"):
        _ensemble_job(tmp_path, [str(tmp_path / "s0")] * 2)
    mixed = _ensemble_job(tmp_path, _saved_sets(tmp_path, digits, (1, 2)), mode="per-class-best")
    with pytest.raises(DataError, match="one IPC"):
        check_job_data(mixed, digits)
    with pytest.raises(DataError, match="sets: every entry must be a set folder"):
        check_job_data(_ensemble_job(tmp_path, [str(tmp_path / "s0"), str(tmp_path / "nope")]), digits)
    from cmidd.data import load_dataset

    with pytest.raises(CmiddError, match="but data is digits 1x16px"):
        check_job_data(_ensemble_job(tmp_path, [str(tmp_path / "s0"), str(tmp_path / "s1")],
                                     data={"name": "digits", "im_size": 16}), load_dataset("digits", im_size=16))
    assert not (tmp_path / "out").exists()


# -- through MLflow -----------------------------------------------------------------------------------

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def search(tmp_path_factory, digits):
    """A parent run with three finished tiny trials (child runs), one child without a set, one failed child."""
    from cmidd import tracking as T

    root = tmp_path_factory.mktemp("ens")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = T.client_for(uri)
    exp = T.ensure_experiment("search-ens", client=client)
    parent = client.create_run(exp, run_name="search").info.run_id
    trials = [T.tracked_run(parse_job(tiny_distill(root / f"t{s}", seed=s, name=f"trial-{s}")), uri, data=digits,
                            experiment="search-ens", parent_run_id=parent) for s in range(3)]
    for status in ("FINISHED", "FAILED"):  # not usable: no synthetic/ artifact, or not finished
        r = client.create_run(exp, run_name=f"odd-{status}", tags={"mlflow.parentRunId": parent}).info.run_id
        client.log_metric(r, "acc/cross_arch_mean", 2.0)
        client.set_terminated(r, status)
    client.set_terminated(parent, "FINISHED")
    return uri, client, parent, trials


EVAL = EvalCfg(archs=["ConvNetD1"], num_eval=1, epochs=1, dsa=False)


def test_from_search_concats_the_top_k_trials_and_registers_with_ensemble_of(search):
    from cmidd.app import ensemble, open_store
    from cmidd.tracking import load_set

    uri, client, parent, trials = search
    acc = {t.run_id: t.result.metrics["acc/cross_arch_mean"] for t in trials}
    logged = client.get_run(trials[0].run_id).data.metrics  # every tracked evaluation logs its ensemble
    assert {"acc/ensemble", "ece/ensemble"} <= set(logged)
    top2 = sorted(acc, key=lambda r: -acc[r])[:2]
    r = ensemble(open_store(uri), "concat", EVAL, from_search=parent, top=2)
    assert r.sources == [f"runs:/{i}" for i in top2]
    assert r.version["name"] == "distilled-digits-ipc4" and r.synset.ipc == 4
    assert {"acc/ensemble", "ece/ensemble", "acc/cross_arch_mean"} <= set(r.metrics)
    mv = client.get_model_version("distilled-digits-ipc4", str(r.version["version"]))
    assert json.loads(mv.tags["ensemble_of"]) == r.sources and mv.source == f"runs:/{r.run_id}/synthetic"
    run = client.get_run(r.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kind"] == "ensemble"
    assert run.data.tags["ensemble.from_search"] == parent  # the store's tags on the run the app's job made
    from cmidd.data import load_dataset
    from cmidd.protocol import Protocol  # scored under the ensemble's eval block: its protocol, on run and version

    assert mv.tags["protocol.id"] == run.data.tags["protocol.id"] == Protocol.of(EVAL, load_dataset("digits")).id
    # the registered set is the two trials' sets, class by class, verified on the way back
    pulled = load_set("digits", 4, version=r.version["version"], uri=uri)
    by_id = {t.run_id: t.result.synset for t in trials}
    want = torch.cat([by_id[i].images.view(10, 2, 1, 8, 8) for i in top2], dim=1).reshape(40, 1, 8, 8)
    assert torch.equal(pulled.images, want) and pulled.labels.tolist() == [c for c in range(10) for _ in range(4)]


def test_from_versions_per_class_best_via_the_cli(search, capsys):
    from cmidd.cli import main

    uri, client, _, trials = search
    before = {int(v.version) for v in client.search_model_versions("name = 'distilled-digits-ipc2'")}
    code = main(["-q", "ensemble", "--dataset", "digits", "--ipc", "2", "--versions", "1,3", "--mode",
                 "per-class-best", "--set", "eval.epochs=1", "--set", "eval.num_eval=1", "--set",
                 "eval.archs=[ConvNetD1]", "--set", "eval.dsa=false", "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert code == 0 and "ensemble" in out and "registered: distilled-digits-ipc2 version" in out
    new = [v for v in client.search_model_versions("name = 'distilled-digits-ipc2'") if int(v.version) not in before]
    assert len(new) == 1
    assert json.loads(new[0].tags["ensemble_of"]) == ["distilled-digits-ipc2/1", "distilled-digits-ipc2/3"]
    assert new[0].tags["ensemble_mode"] == "per-class-best"


def test_ensemble_cli_bad_input_exits_2_and_writes_nothing(search, capsys):
    from cmidd.cli import main

    uri, client, parent, _ = search
    n_runs = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    assert main(["ensemble", "--versions", "1,2", "--tracking-uri", uri]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main(["ensemble", "--from-search", parent, "--set", "eval.epochs=0", "--tracking-uri", uri]) == 2
    assert "--set: eval.epochs: Input should be greater than or equal to 1 (got 0)" in capsys.readouterr().err
    assert main(["ensemble", "--from-search", "nope", "--tracking-uri", uri]) == 2  # an unknown name is bad input
    assert "no run 'nope'" in capsys.readouterr().err
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == n_runs

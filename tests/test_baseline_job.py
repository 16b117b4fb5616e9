"""The ``baseline`` job kind: random-real draws scored by the runner (what every baseline run of the store comes
from), checked against the evaluation called directly; tracked, each draw is a baseline run ``cmidd best`` pairs."""

from __future__ import annotations

import json

import pytest
import torch

EVAL = {"archs": ["ConvNetD1"], "num_eval": 1, "epochs": 2, "dsa": False}


def baseline_raw(tmp_path, **over) -> dict:
    return {"kind": "baseline", "name": "rr", "seed": 3, "ipc": 2, "draws": [3, 0, 1], "data": {"name": "digits"},
            "eval": EVAL, "output": {"dir": str(tmp_path / "rr")}} | over


def test_a_baseline_job_scores_each_draw_as_the_evaluation_does(tmp_path, digits):
    from cmidd.config import EvalCfg, parse_job
    from cmidd.evaluate import evaluate
    from cmidd.runner import random_real_set, run_job

    res = run_job(parse_job(baseline_raw(tmp_path)), data=digits)
    assert [d.draw for d in res.draws] == [3, 0, 1]
    for d in res.draws:  # the reference: the draw made and scored by hand, with the job's evaluation seed
        ref_set = random_real_set(digits, 2, d.draw)
        assert torch.equal(d.synset.images, ref_set.images) and d.synset.sha256() == ref_set.sha256()
        ref = evaluate(*ref_set.training_set(), digits, EvalCfg(**EVAL), 3, "cpu").metrics()
        assert d.metrics == pytest.approx(ref, abs=0)
    assert len({d.synset.sha256() for d in res.draws}) == 3  # three different draws
    assert {k: v for k, v in res.metrics.items() if not k.startswith("draws/")} == res.draws[0].metrics
    assert res.synset is None and res.metrics["draws/n"] == 3
    accs = [d.metrics["acc/cross_arch_mean"] for d in res.draws]  # the spread over draws, by hand
    mean = sum(accs) / 3
    assert res.metrics["draws/mean/acc/cross_arch_mean"] == pytest.approx(mean, abs=1e-12)
    assert res.metrics["draws/std/acc/cross_arch_mean"] == pytest.approx(
        (sum((a - mean) ** 2 for a in accs) / 2) ** 0.5, abs=1e-12)
    assert {(r["draw"], r["set"]) for r in res.rows} == {(d, f"random-real draw {d}") for d in (3, 0, 1)}
    from cmidd.synthetic import SyntheticSet  # each draw saved beside result.json, checksums verified on load

    for d in res.draws:
        assert SyntheticSet.load(tmp_path / "rr" / "draws" / str(d.draw)).sha256() == d.synset.sha256()
    written = json.loads((tmp_path / "rr" / "result.json").read_text())
    assert [d["draw"] for d in written["draws"]] == [3, 0, 1]
    assert written["draws"][1]["sha256"] == res.draws[1].synset.sha256()


@pytest.mark.parametrize("over, words", [
    ({"draws": []}, ["draws", "at least 1"]),
    ({"draws": [1, 1]}, ["draws: must be distinct", "[1, 1]"]),
    ({"draws": [-1]}, ["draws.0", "greater than or equal to 0"]),
    ({"ipc": 0}, ["ipc", "greater than or equal to 1"]),
])
def test_a_bad_baseline_job_is_one_line(tmp_path, over, words):
    from cmidd.config import parse_job
    from cmidd.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_job(baseline_raw(tmp_path, **over), "b.yaml")
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not (tmp_path / "rr").exists()


def test_a_baseline_ipc_beyond_the_smallest_class_writes_nothing(tmp_path, digits):
    from cmidd.config import parse_job
    from cmidd.errors import DataError
    from cmidd.runner import run_job

    with pytest.raises(DataError, match="ipc <= smallest class size"):
        run_job(parse_job(baseline_raw(tmp_path, ipc=1000)), data=digits)
    assert not (tmp_path / "rr").exists()


def test_a_tracked_baseline_job_logs_each_draw_where_best_pairs_it(tmp_path, digits):
    """``cmidd run`` of a baseline job with tracking: the job's run, and under it one baseline run per draw with
    the job's protocol and seeds, which the baseline table reads (as ``cmidd best`` does)."""
    from cmidd.app import execute
    from cmidd.config import parse_job
    from cmidd.protocol import Protocol
    from cmidd.tracking import baseline_table, client_for

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    job = parse_job(baseline_raw(tmp_path))
    done = execute(job, track=True, uri=uri, data=digits)
    client = client_for(uri)
    pid = Protocol.of(job.eval, digits).id
    table = baseline_table(client, "digits", 2, pid)
    assert set(table) == {3} and set(table[3]) == {0, 1, 3}  # evaluation seed 3, its three draws
    by_draw = {d.draw: d.metrics["acc/cross_arch_mean"] for d in done.result.draws}
    assert {d: v for d, (v, _) in table[3].items()} == by_draw
    for _, run_id in table[3].values():
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == done.run_id and run.data.tags["kind"] == "baseline"
        assert run.info.status == "FINISHED"
    parent = client.get_run(done.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["baseline.draws"] == "3,0,1"
    assert parent.data.tags["protocol.id"] == pid

"""The gain over random-real (issue 34): paired with the set's own evaluation seed and initialization draw, over
>= 3 random-real draws with its spread, and, when the champion was picked from several versions, not the
selected maximum. Real sqlite MLflow store, 8x8 digits, IPC 2, ConvNetD1 width 16."""

from __future__ import annotations

import json

import pytest
import torch

from cmidd.data import RealPool
from cmidd.formation import init_stored
from cmidd.gain import BASELINE_DRAWS, draw_seeds, paired_gain, spread
from cmidd.runner import random_real_set

from conftest import tiny_distill

EVAL = {"archs": ["ConvNetD1"], "num_eval": 1, "epochs": 3, "dsa": False}


def test_draws_and_arithmetic():
    assert BASELINE_DRAWS >= 3
    assert draw_seeds(5) == [5, 6, 7] and draw_seeds(5, own_draw=6) == [6, 5, 7] and draw_seeds(0, 9, 4) == [9, 0, 1, 2]
    assert spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}  # sample std: sqrt(((1 + 0 + 1) / 2))
    assert spread([4.0]) == {"mean": 4.0, "std": None, "n": 1} and spread([])["mean"] is None
    g = paired_gain(0.80, {2: 0.72, 0: 0.70, 1: 0.74}, own_draw=0)
    assert g["gain"] == pytest.approx(8.0) and g["gain_std"] == pytest.approx(2.0) and g["n"] == 3
    assert [r["draw"] for r in g["draws"]] == [0, 1, 2] and g["draws"][0]["gain"] == pytest.approx(10.0)
    assert g["own_draw"] is True and paired_gain(0.8, {1: 0.7}, own_draw=0)["own_draw"] is False


def test_the_own_draw_is_the_sets_initialization(digits):
    """random-real with a set's seed draws exactly the real images a real-initialized set (factor 1) starts from,
    so the draw ``best`` pairs first is the set's own initialization."""
    for seed in (0, 3):
        x0, y0 = init_stored(RealPool(digits.train_x, digits.train_y, 10, torch.device("cpu")), 2, 1,
                             torch.Generator().manual_seed(seed))
        rr = random_real_set(digits, 2, seed)
        assert torch.equal(rr.images, x0) and torch.equal(rr.labels, y0)


def test_best_pairs_the_gain_and_never_reports_the_selected_max(tmp_path, monkeypatch, digits, capsys):
    pytest.importorskip("mlflow")
    from cmidd import tracking as T
    from cmidd.cli import main
    from cmidd.config import parse_job
    from cmidd.protocol import protocol_of_job
    from cmidd.scoring import SCORER
    from cmidd.tracking._baselines import log_random_real_draws

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = T.client_for(uri)
    jobs = {s: parse_job(tiny_distill(tmp_path / f"s{s}", name=f"s{s}", seed=s, eval=dict(EVAL),
                                      output__checkpoint_every=0)) for s in (0, 1)}
    runs = {s: T.tracked_run(j, uri, data=digits) for s, j in jobs.items()}
    protocol = protocol_of_job(jobs[0], digits)
    ev = jobs[0].eval
    for s in (0, 1):  # each set's paired draws: its eval seed, its own init draw first
        log_random_real_draws(SCORER, digits, 2, protocol, ev, s, "baselines", own_draw=s, client=c)
    # the newest baseline run of this protocol has another eval seed: the old answer took it, the paired one never
    decoy = log_random_real_draws(SCORER, digits, 2, protocol, ev, 7, "baselines", client=c)[-1]

    best = T.best_set("digits", 2, uri=uri)
    b = best["baseline"]
    table = T.baseline_table(c, "digits", 2, protocol.id)
    assert sorted(table) == [0, 1, 7] and all(len(v) == 3 for v in table.values())
    champ_seed = int(best["params"]["seed"])
    champ = b["champion"]
    assert champ["eval_seed"] == champ_seed and champ["own_draw"] and champ["n"] == 3
    assert [d["draw"] for d in champ["draws"]] == sorted(draw_seeds(champ_seed, champ_seed))
    want = [100 * (best["value"] - c.get_run(d["run_id"]).data.metrics["acc/cross_arch_mean"]) for d in champ["draws"]]
    assert champ["gain"] == pytest.approx(sum(want) / 3)
    assert decoy not in {d["run_id"] for d in champ["draws"]}
    for d in champ["draws"]:  # every paired draw was scored with the champion's eval seed
        tags = c.get_run(d["run_id"]).data.tags
        assert tags["baseline.eval_seed"] == str(champ_seed) and tags["baseline.draw"] == str(d["draw"])

    # two versions: the headline is the mean over both versions' paired gains, the champion's own is flagged
    assert b["over"] == "versions" and b["selected_from"] == 2 and b["n"] == 2
    per = {v["version"]: v["gain"] for v in b["versions"]}
    for s, r in runs.items():
        version = r.versions[0]["version"]
        value = r.result.metrics["acc/cross_arch_mean"]
        rr = [m for _, (m, _) in sorted(table[s].items())]
        assert per[int(version)] == pytest.approx(sum(100 * (value - x) for x in rr) / 3)
    assert b["gain"] == pytest.approx(sum(per.values()) / 2) and b["gain"] <= champ["gain"] + 1e-9
    assert best["mean_over"] == ["ConvNetD1"]

    args = ["--dataset", "digits", "--ipc", "2", "--tracking-uri", uri]
    capsys.readouterr()
    assert main(["best", *args]) == 0
    text = capsys.readouterr().out
    assert "(mean +- std over 2 of the 2 versions under this protocol, each paired with its own draws)" in text
    assert f"each scored with the set's eval seed {champ_seed}, the set's own init draw among them)" in text
    assert "is the best of 2: biased upward" in text and "(mean over ConvNetD1)" in text
    assert main(["best", "--json", *args]) == 0
    got = json.loads(capsys.readouterr().out)["baseline"]
    assert got["over"] == "versions" and got["champion"]["n"] == 3 and got["champion"]["gain_std"] is not None

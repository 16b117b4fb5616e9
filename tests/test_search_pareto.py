"""A multi-objective search (``search.objectives``): the schema's one-of rule, then a tiny real search on a local
Ray (Tune + Optuna's multi-objective TPE, MLflow sqlite) whose reported Pareto front is checked against a float64
brute force over the trials' own results, and ``cmidd best --pareto`` against a brute-force scan of the front.

4 trials of 4 DM iterations on 8x8 digits (ConvNetD1 width 16, IPC searched in {1, 2, 3}, lr_img searched), no
CMI, one evaluation (1 net, 2 epochs) at the end: about 20 s, most of it Tune's actor starts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("optuna")
pytest.importorskip("mlflow")

from cmidd.config import load_search  # noqa: E402
from cmidd.errors import ConfigError  # noqa: E402

from conftest import tiny_distill  # noqa: E402
from test_search import store, template_db, write  # noqa: E402, F401  (the fixture, shared)

ACC, IPC = "acc/cross_arch_mean", "ipc"
OBJECTIVES = [{"metric": ACC, "mode": "max"}, {"metric": IPC, "mode": "min"}]


def pareto_space(tmp_path, **search) -> dict:
    base = tiny_distill(tmp_path, method__dsa=False, eval__dsa=False, eval__num_eval=2)
    return {"name": "pareto-tiny", "base": base,
            "params": {"ipc": {"choice": [1, 2, 3]}, "method.lr_img": {"loguniform": [0.01, 10.0]}},
            "search": {"num_samples": 4, "seed": 0, "objectives": OBJECTIVES, "asha": None, **search},
            "register_top_k": 1, "storage": str(tmp_path / "store")}


@pytest.mark.parametrize("search, rule", [
    ({"metric": ACC}, "search: give either metric + mode (one objective) or objectives (a list), not both, but got "
                      "objectives and metric"),
    ({"asha": {"grace_period": 1}}, "search: asha: a multi-objective search (objectives) stops no trial early"),
    ({"objectives": OBJECTIVES[:1]}, "search.objectives: List should have at least 2 items"),
    ({"objectives": [OBJECTIVES[0], {"metric": "nope", "mode": "min"}]},
     "search.objectives.1.metric: must be a metric every report of a trial carries"),
    ({"objectives": [OBJECTIVES[0], OBJECTIVES[0]]}, "objectives: each metric must be given once"),
])
def test_objectives_or_metric_one_clear_line(tmp_path, search, rule):
    path = write(tmp_path, pareto_space(tmp_path, **search))
    with pytest.raises(ConfigError) as e:
        load_search(path)
    assert str(e.value).startswith(f"{path}: ") and rule in str(e.value) and "\n" not in str(e.value)


def test_the_single_objective_form_stays_valid_and_objectives_set_the_primary(tmp_path):
    single = pareto_space(tmp_path)
    del single["search"]["objectives"]
    cfg = load_search(write(tmp_path, single))
    assert not cfg.search.multi and [(o.metric, o.mode) for o in cfg.search.targets] == [(ACC, "max")]
    cfg = load_search(write(tmp_path, pareto_space(tmp_path)))
    assert cfg.search.multi and (cfg.search.metric, cfg.search.mode) == (ACC, "max")


def brute_front(points: np.ndarray, signs: np.ndarray) -> set[int]:
    s = points.astype(np.float64) * signs
    dominated = ((s[:, None, :] >= s[None, :, :]).all(-1) & (s[:, None, :] > s[None, :, :]).any(-1)).any(0)
    return {i for i in range(len(points)) if not dominated[i]}


def test_tiny_pareto_search_front_equals_brute_force(tmp_path, template_db, ray_local, capsys):  # noqa: F811
    from cmidd import cli
    from cmidd.app import run_search
    from cmidd.tracking import PARETO_FILE, client_for

    uri = store(tmp_path, template_db)
    cfg = load_search(write(tmp_path, pareto_space(tmp_path)))
    summary = run_search(cfg, uri, progress=False)
    rows = summary["trials"]
    assert len(rows) == 4 and all(r["state"] == "finished" for r in rows)
    assert all(r["objectives"][IPC] == r["params"]["ipc"] for r in rows)  # the cost the trial reported: its IPC
    assert all(r["objectives"][ACC] == r["metric"] and r["objective_std"][ACC] == r["std"] for r in rows)
    assert all(r["objective_std"][IPC] is None for r in rows)

    pts = np.array([[r["objectives"][ACC], r["objectives"][IPC]] for r in rows], dtype=np.float64)
    want = {rows[i]["trial_id"] for i in brute_front(pts, np.array([1.0, -1.0]))}
    assert set(summary["pareto"]) == want and want

    client = client_for(uri)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.metrics["pareto/size"] == len(want)
    assert {PARETO_FILE, "pareto.png", "trials.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert json.loads(parent.data.params["search.objectives"]) == OBJECTIVES

    # cmidd best --pareto: per budget, the brute-force best accuracy among ALL trials within it (the front holds it)
    for k in (1, 2, 3):
        ok = [r for r in rows if r["objectives"][IPC] <= k]
        capsys.readouterr()
        code = cli.main(["best", "--pareto", "pareto-tiny", "--max-ipc", str(k), "--tracking-uri", uri, "--json"])
        if not ok:
            assert code == 2
            continue
        assert code == 0
        got = json.loads(capsys.readouterr().out)
        assert got["objectives"][ACC] == max(r["objectives"][ACC] for r in ok) and got["objectives"][IPC] <= k
        assert got["trial_id"] in want
        # every front trial is registered (not only the top-k by accuracy): the answer can be pulled
        reg = got["registered"]
        ipc = int(got["objectives"][IPC])
        assert reg["name"] == f"distilled-digits-ipc{ipc}"
        mv = client.get_model_version(reg["name"], str(reg["version"]))
        assert mv.run_id == got["run_id"]  # scored under the registration protocol already: its own run
        pulled = cli.main(["pull", "--dataset", "digits", "--ipc", str(ipc), "--version",
                           str(reg["version"]), "--out", str(tmp_path / f"pulled-{k}"), "--tracking-uri", uri])
        assert pulled == 0 and (tmp_path / f"pulled-{k}" / "manifest.json").is_file()
    assert {e["run_id"] for e in summary["registered"]} >= {r["run_id"] for r in rows if r["trial_id"] in want}
    capsys.readouterr()
    assert cli.main(["best", "--pareto", "pareto-tiny", "--max-seconds", "5", "--tracking-uri", uri]) == 2
    assert "did not optimize time/distill_s (its objectives: acc/cross_arch_mean, ipc)" in capsys.readouterr().err


@pytest.mark.parametrize("args, line", [
    ([], "error: --dataset and --ipc: both are required (unless --pareto SEARCH)"),
    (["--max-ipc", "5"], "error: --max-ipc / --max-seconds: a budget needs --pareto SEARCH (a multi-objective search)"),
    (["--pareto", "s", "--max-seconds", "0"], "error: --max-seconds: 0 < N <= 1e9 must hold, but got 0"),
])
def test_best_bad_input_is_one_line_exit_2(tmp_path, capsys, args, line):
    from cmidd import cli

    assert cli.main(["best", *args, "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert capsys.readouterr().err.strip() == line
    assert not (tmp_path / "none.db").exists()  # nothing written

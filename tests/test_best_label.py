"""The name of a set (``dm`` / ``dm+cmi``) is one rule (``cmidd.lam.set_label``): the runner's tables and the
registry's answers (``cmidd best``: champion and runner-up) agree, for a set weighed by cmi.alpha too.

Issue 34: ``best``'s runner-up line read only ``cmi.lam`` and called an alpha-weighted set ``dm`` while the
runner called it ``dm+cmi``. Real sqlite MLflow store, 8x8 digits, IPC 2, ConvNetD1 width 16.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mlflow")

from cmidd import tracking as T  # noqa: E402
from cmidd.config import parse_job  # noqa: E402
from cmidd.lam import set_label, set_label_of_job as job_label, set_label_of_params  # noqa: E402

from conftest import tiny_distill  # noqa: E402

EVAL = {"archs": ["ConvNetD1"], "num_eval": 1, "epochs": 3, "dsa": False}


@pytest.mark.parametrize("cmi, want", [({"lam": 0}, "dm"), ({"lam": 10.0}, "dm+cmi"), ({"alpha": 0.05}, "dm+cmi")])
def test_job_and_params_name_a_set_alike(tmp_path, cmi, want):
    job = parse_job(tiny_distill(tmp_path, cmi=cmi))
    params = {"method.name": "dm", "cmi.lam": f"{job.cmi.lam:g}", "cmi.alpha": f"{job.cmi.alpha:g}"}
    assert job_label(job) == set_label_of_params(params) == want
    assert set_label_of_params({**params, "cmi_on": "False"}) == "dm"  # a search's lambda = 0 arm
    assert set_label_of_params({}, "ensemble") == "ensemble" and set_label("gm", alpha="0.1") == "gm+cmi"


def test_best_names_an_alpha_weighted_runner_up_dm_cmi(tmp_path, monkeypatch, digits, capsys):
    """A good plain DM set (real init) and an alpha-weighted one that cannot learn (noise init, lr ~0): the
    alpha set is the runner-up, and ``best`` (JSON and text) calls it dm+cmi, as the runner does."""
    from cmidd.cli import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    good = parse_job(tiny_distill(tmp_path / "g", name="good", eval=dict(EVAL), output__checkpoint_every=0))
    weak = parse_job(tiny_distill(tmp_path / "g", name="weak", method__init="noise", method__iterations=1,
                                  method__lr_img=1e-6, cmi={"alpha": 0.05}, eval=dict(EVAL),
                                  output__checkpoint_every=0))
    assert job_label(weak) == "dm+cmi"
    runs = {T.tracked_run(j, uri, data=digits).run_id: job_label(j) for j in (good, weak)}
    best = T.best_set("digits", 2, uri=uri)
    assert best["label"] == runs[best["run_id"]] == "dm"
    assert best["runner_up"]["method"] == runs[best["runner_up"]["run_id"]] == "dm+cmi"
    assert main(["best", "--dataset", "digits", "--ipc", "2", "--tracking-uri", uri]) == 0
    text = capsys.readouterr().out
    assert f"runner-up version {best['runner_up']['version']} (dm+cmi)" in text

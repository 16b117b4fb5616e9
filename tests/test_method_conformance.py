"""Every registered method conforms to the loop's contract (issue 36): it runs a few steps on 8x8 digits, and a run
stopped halfway (a checkpoint) and resumed ends on the bit-identical set of the run that was never stopped.

The methods are read from the registries, so a new method is covered without editing this file: its config
model (``METHOD_CONFIGS``) gives its fields, its declared ``artifacts`` are prepared by the runner's preparers.
``TINY`` only shrinks the known methods' defaults to keep the test quick.
"""

from __future__ import annotations

import pytest
import torch

from cmidd.config import parse_job
from cmidd.distill import CHECKPOINT, distill
from cmidd.config import METHOD_CONFIGS
from cmidd.methods import METHODS
from cmidd.runner import ARTIFACTS

from conftest import stop_at, tiny_distill

STEPS = 4
# toy sizes per method (a method not listed runs with its model's defaults)
TINY = {
    "gm": {"outer_loop": 2, "inner_loop": 1, "batch_train": 8},
    "idc": {"outer_loop": 2, "inner_loop": 1, "batch_train": 8, "factor": 2},
    "mtt": {"syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1, "lr_img": 10.0},
}


def test_every_method_has_a_config_model_and_a_factory():
    assert METHOD_CONFIGS.names() == METHODS.names() and len(METHODS) >= 4
    for name in METHOD_CONFIGS.names():
        model = METHOD_CONFIGS.get(name)
        assert model().name == name  # the model's default name is its registered name (the union's tag)
        assert set(TINY.get(name, {})) <= set(model.model_fields)
        assert all(a in ARTIFACTS for a in model.artifacts)  # the runner can prepare what it declares


def _job(tmp_path, name: str, **over):
    raw = tiny_distill(tmp_path, method__name=name, method__iterations=STEPS, output__checkpoint_every=1, **over)
    raw["method"].update(TINY.get(name, {}))
    raw["experts"] = {"num": 2, "epochs": 2, "dir": str(tmp_path / "experts")}  # read by methods that declare them
    return parse_job(raw)


@pytest.mark.parametrize("name", METHOD_CONFIGS.names())
def test_every_method_resumes_to_the_bit_identical_set(tmp_path, digits, name):
    job = _job(tmp_path, name)
    artifacts = {a: ARTIFACTS[a](job, digits, torch.device("cpu")) for a in job.method.artifacts}
    experts = artifacts.get("experts")

    straight, h = distill(job, digits, experts=experts)
    assert h.step == list(range(1, STEPS + 1)) and all(torch.isfinite(torch.tensor(h.loss_dd)))
    assert straight.images.shape[0] == 10 * job.ipc and torch.isfinite(straight.images).all()

    work = tmp_path / "w"
    work.mkdir()
    hooks = stop_at(STEPS // 2)
    half, h1 = distill(job, digits, hooks=hooks, workdir=work, experts=experts)
    assert h1.step == list(range(1, STEPS // 2 + 1)) and (work / CHECKPOINT).is_file()
    assert not torch.equal(half.images, straight.images)  # halfway is not the end: the images still move
    resumed, h2 = distill(job, digits, workdir=work, resume=True, experts=experts)
    assert h2.step == list(range(1, STEPS + 1))
    assert torch.equal(resumed.images, straight.images) and torch.equal(resumed.labels, straight.labels)
    assert resumed.sha256() == straight.sha256()

"""Batched gradient matching (``method.gm_impl: batched``) against the reference's per-class loop (``loop``).

The loop is the reference (DC/DSA's main.py: per class, the real and the synthetic gradient, ``match_loss``);
the batched pass must give the same loss and the same image gradient in float64, with DSA (the same seed per
class on both sides), with BatchNorm (per-class batch statistics), with padded draws and a class subset.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cmidd.config import NetCfg, method_cfg, parse_job
from cmidd.data import RealPool
from cmidd.distill import distill
from cmidd.methods import MethodContext, build_method
from cmidd.methods.gm import gm_distance, mse_distance
from cmidd.methods.gm_batched import class_groups

from conftest import tiny_distill


def _method(digits, impl: str, name: str = "gm", norm: str = "instance", dsa: bool = True, batch_real: int = 12,
            ipc: int = 3):
    pool = RealPool(digits.train_x.double(), digits.train_y, digits.num_classes)
    cfg = method_cfg(name=name, gm_impl=impl, dsa=dsa, batch_real=batch_real, gm_class_chunk=4)
    m = build_method(MethodContext(cfg, NetCfg(name="ConvNetD2", width=8, norm=norm), pool, 1, 10, 8,
                                   torch.device("cpu")))
    m.net.double()
    x0, y = pool.random_init(ipc, torch.Generator().manual_seed(3))
    return m, x0, y


def _loss_and_grad(m, x0, y, seed: int, classes=None):
    gen = torch.Generator().manual_seed(seed)
    m.begin_iteration(gen)
    x = x0.clone().requires_grad_(True)
    loss = m.loss(x, y, gen, classes)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g, gen.initial_seed(), torch.randint(0, 2**31 - 1, (1,), generator=gen).item()


@pytest.mark.parametrize("name, norm, dsa, batch_real", [
    ("gm", "instance", False, 12), ("gm", "instance", True, 12), ("gm", "batch", False, 12),
    ("gm", "batch", True, 12),
    ("gm", "instance", True, 400),  # draws of unequal size (whole classes): padded rows of weight 0
    ("gm", "batch", True, 400),  # ... grouped by size with batch statistics
    ("idc", "instance", True, 12),  # IDC's squared-difference distance
])
def test_batched_equals_loop_float64(digits, name, norm, dsa, batch_real):
    ref = _loss_and_grad(*_method(digits, "loop", name, norm, dsa, batch_real), seed=11)
    new = _loss_and_grad(*_method(digits, "batched", name, norm, dsa, batch_real), seed=11)
    assert ref[0].dtype == torch.float64 and ref[0] > 0
    torch.testing.assert_close(new[0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(new[1], ref[1], rtol=1e-9, atol=1e-12)
    assert new[1].abs().sum() > 0 and new[3] == ref[3]  # same generator state after the loss


def test_batched_equals_loop_for_a_class_subset(digits):
    """A data-parallel worker's share: only its classes' terms, the generator consumed as for all."""
    ref = _loss_and_grad(*_method(digits, "loop"), seed=5, classes=[1, 4, 7])
    new = _loss_and_grad(*_method(digits, "batched"), seed=5, classes=[1, 4, 7])
    torch.testing.assert_close(new[0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(new[1], ref[1], rtol=1e-9, atol=1e-12)
    assert new[3] == ref[3]
    per_class = new[1].view(10, 3, -1).abs().sum((1, 2))
    assert per_class[[1, 4, 7]].min() > 0 and per_class[[0, 2, 3, 5, 6, 8, 9]].max() == 0


def test_classes_per_pass_do_not_change_the_loss(digits):
    """With BatchNorm, 4 classes per pass (vmap) and 1 class per pass give the same loss: per-class statistics."""
    m, x0, y = _method(digits, "batched", norm="batch", dsa=True)
    a = _loss_and_grad(m, x0, y, seed=2)
    m.ctx = replace(m.ctx, cfg=m.ctx.cfg.model_copy(update={"gm_class_chunk": 1}))
    b = _loss_and_grad(m, x0, y, seed=2)
    torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a[1], b[1], rtol=1e-9, atol=1e-12)


def test_distances_with_a_class_dimension_sum_the_per_class_distances():
    g = torch.Generator().manual_seed(0)
    real = [torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g,
                                                                                   dtype=torch.float64)]
    syn = [torch.randn_like(t) for t in real]
    for dist in (gm_distance, mse_distance):
        per_class = sum(dist([r[k] for r in real], [s[k] for s in syn]) for k in range(4))
        torch.testing.assert_close(dist(real, syn, lead=1), per_class)


def test_class_groups():
    assert class_groups([0, 1, 2, 3, 4], [5, 5, 4, 5, 0], True, 2) == [[0, 1], [2, 3]]
    assert class_groups([0, 1, 2, 3, 4], [5, 5, 4, 5, 0], False, 2) == [[0, 1], [3], [2]]


def test_auto_is_batched_on_cuda_only(digits):
    pool = RealPool(digits.train_x, digits.train_y, digits.num_classes)
    ctx = MethodContext(method_cfg(name="gm"), NetCfg(name="ConvNetD1", width=8), pool, 1, 10, 8, torch.device("cpu"))
    assert method_cfg(name="gm").gm_impl == "auto" and build_method(ctx).impl == "loop"
    assert build_method(replace(ctx, cfg=method_cfg(name="gm", gm_impl="batched"))).impl == "batched"


def test_gm_impl_is_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="gm_impl"):
        method_cfg(name="gm", gm_impl="fast")
    with pytest.raises(ValidationError, match="gm_class_chunk"):
        method_cfg(name="gm", gm_class_chunk=100_000)


@pytest.mark.parametrize("dsa", [False, True])
def test_a_few_dc_steps_give_the_same_set_both_ways(tmp_path, digits, dsa):
    """Whole DC iterations (outer steps, the net trained in between) on 8x8 digits: the same synthetic set."""
    sets = {}
    for impl in ("loop", "batched"):
        job = parse_job(tiny_distill(tmp_path, method={"name": "gm", "iterations": 2, "batch_real": 16,
                                                       "outer_loop": 3, "inner_loop": 2, "batch_train": 20,
                                                       "lr_img": 0.1, "dsa": dsa, "gm_impl": impl}))
        sets[impl], _ = distill(job, digits)
    init, _ = RealPool(digits.train_x, digits.train_y, 10).random_init(2, torch.Generator().manual_seed(0))
    assert (sets["loop"].images - init).abs().max() > 1e-3  # the images moved
    torch.testing.assert_close(sets["batched"].images, sets["loop"].images, rtol=1e-4, atol=1e-5)

"""method.precision (DM's DD net under bf16 autocast) and the gradient balance of CMI against the DD loss."""

from __future__ import annotations

import pytest
import torch

from cmidd.config import parse_job
from cmidd.data import RealPool
from cmidd.config import NetCfg, method_cfg
from cmidd.lam import gradient_norms
from cmidd.errors import ConfigError
from cmidd.methods import MethodContext, build_method
from cmidd.nets import create_net
from cmidd.training import seeded_net

from conftest import brute_norms, tiny_distill


def _dm_loss_and_grad(digits, precision: str):
    pool = RealPool(digits.train_x, digits.train_y, digits.num_classes)
    cfg = method_cfg(name="dm", batch_real=32, precision=precision)
    m = build_method(MethodContext(cfg, NetCfg(name="ConvNetD2"), pool, 1, 10, 8, torch.device("cpu")))
    gen = torch.Generator().manual_seed(0)
    syn, y = pool.random_init(3, gen)
    syn = syn.clone().requires_grad_(True)
    m.begin_iteration(torch.Generator().manual_seed(1))
    loss = m.loss(syn, y, torch.Generator().manual_seed(2))
    (g,) = torch.autograd.grad(loss, syn)
    return loss, g


def test_dm_bf16_is_the_fp32_loss_and_gradient_within_bf16_rounding(digits):
    loss32, g32 = _dm_loss_and_grad(digits, "fp32")
    loss16, g16 = _dm_loss_and_grad(digits, "bf16")
    assert loss16.dtype == torch.float32 and g16.dtype == torch.float32  # only the net ran in bf16
    loss16, loss32 = loss16.detach(), loss32.detach()
    assert float(loss16) != float(loss32)  # it did run in bf16 ...
    assert float(loss16) == pytest.approx(float(loss32), rel=0.05)  # ... within bf16's 8-bit mantissa
    cos = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
    assert cos > 0.98 and (g16.norm() / g32.norm() - 1).abs() < 0.05


def test_precision_bf16_is_dm_only(tmp_path):
    with pytest.raises(ConfigError, match=r"method.precision: unknown field for method gm \(a field of method dm\)"):
        parse_job(tiny_distill(tmp_path, method__name="gm", method__precision="bf16"), "job.yaml")
    with pytest.raises(ConfigError, match="method.precision"):
        parse_job(tiny_distill(tmp_path, method__precision="fp16"), "job.yaml")
    assert parse_job(tiny_distill(tmp_path, method__precision="bf16"), "job.yaml").method.precision == "bf16"


def test_gradient_norms_equal_a_brute_force_computation(digits, tmp_path):
    """Draw m uses iteration m's net and batches: recompute both gradient norms by hand from the same generator."""
    job = parse_job(tiny_distill(tmp_path, ipc=3, cmi__lam=5.0), "job.yaml")
    proxy = seeded_net(lambda: create_net("ConvNetD1", 1, 10, 8, width=16), 0, "cpu").eval().requires_grad_(False)
    g_dd, g_cmi = gradient_norms(job, digits, [proxy], draws=3)
    want_dd, want_cmi = brute_norms(job, digits, proxy, 3)
    assert g_dd == pytest.approx(want_dd, rel=1e-5)
    assert g_cmi == pytest.approx(want_cmi, rel=1e-5)
    assert g_dd > 0 and g_cmi > 0 and g_dd != g_cmi

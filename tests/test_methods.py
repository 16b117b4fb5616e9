"""Every registered method: a finite loss with image gradients; DM and GM math against loop references."""

from __future__ import annotations

import pytest
import torch

from cmidd.config import NetCfg, method_cfg, method_fields
from cmidd.data import RealPool
from cmidd.experts import flat_params
from cmidd.methods import METHODS, MethodContext, build_method
from cmidd.methods.dm import dm_loss
from cmidd.methods.gm import gm_distance
from cmidd.nets import create_net


@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("dsa", [True, False])
def test_every_method_gives_finite_loss_and_image_gradients(digits, name, dsa):
    pool = RealPool(digits.train_x, digits.train_y, digits.num_classes)
    fields = dict(name=name, batch_real=8, dsa=dsa, outer_loop=2, inner_loop=1, batch_train=8)
    cfg = method_cfg(**{k: v for k, v in fields.items() if k in method_fields(name)})  # the method's own
    # MTT's expert trajectories: a ConvNetD1's parameters plus drift, one row per epoch (others ignore them)
    start = flat_params(create_net("ConvNetD1", 1, 10, 8, width=8))
    drift = torch.randn(start.shape, generator=torch.Generator().manual_seed(1))
    experts = [torch.stack([start + 0.01 * e * drift for e in range(5)])]
    ctx = MethodContext(cfg, NetCfg(name="ConvNetD1", width=8), pool, 1, 10, 8, torch.device("cpu"), experts)
    m = build_method(ctx)
    gen = torch.Generator().manual_seed(0)
    syn, y = pool.random_init(2, gen)
    syn = syn.clone().requires_grad_(True)
    m.begin_iteration(gen)
    loss = m.loss(syn, y, gen)
    assert loss.dim() == 0 and torch.isfinite(loss)
    (g,) = torch.autograd.grad(loss, syn)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    m.after_update(syn, y, gen)


def test_dm_loss_matches_class_loop():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(30, 5, generator=g, dtype=torch.float64)
    syn = torch.randn(9, 5, generator=g, dtype=torch.float64)
    ry, sy = torch.arange(3).repeat(10), torch.arange(3).repeat_interleave(3)
    ref = sum(((real[ry == c].mean(0) - syn[sy == c].mean(0)) ** 2).sum() for c in range(3))
    assert dm_loss(real, ry, syn, sy, 3).item() == pytest.approx(ref.item(), rel=1e-12)


def test_gm_distance_closed_form():
    # Parallel rows: distance 0; orthogonal rows: 1 per row; biases (1-d) are skipped.
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert gm_distance([w, torch.ones(2)], [3 * w, -torch.ones(2)]).item() == pytest.approx(0.0, abs=1e-6)
    w2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert gm_distance([w], [w2]).item() == pytest.approx(2.0, abs=1e-6)
    assert gm_distance([w], [-w]).item() == pytest.approx(4.0, abs=1e-5)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_round_trips_its_state(digits, name):
    """The Method protocol's state_dict/load_state_dict: what a checkpoint stores is what it restores."""
    pool = RealPool(digits.train_x, digits.train_y, digits.num_classes)
    start = flat_params(create_net("ConvNetD1", 1, 10, 8, width=8))
    experts = [torch.stack([start] * 5)]
    ctx = MethodContext(method_cfg(name=name, batch_real=8), NetCfg(name="ConvNetD1", width=8), pool, 1, 10, 8,
                        torch.device("cpu"), experts)
    m = build_method(ctx)
    state = m.state_dict()
    assert isinstance(state, dict)
    m.load_state_dict(state)
    assert m.state_dict().keys() == state.keys()


@pytest.mark.parametrize("name, momentum, distance", [("gm", 0.0, gm_distance), ("idc", 0.9, None)])
def test_gm_family_net_optimizer_follows_the_references(digits, name, momentum, distance):
    """DC/DSA's main.py trains the matching net with plain SGD (no momentum); IDC with momentum 0.9 and
    the squared-difference distance. IDC is GM composed with IDC's choices, not a subclass."""
    pool = RealPool(digits.train_x, digits.train_y, digits.num_classes)
    ctx = MethodContext(method_cfg(name=name), NetCfg(name="ConvNetD1", width=8), pool, 1, 10, 8, torch.device("cpu"))
    m = build_method(ctx)
    m.begin_iteration(torch.Generator().manual_seed(0))
    assert m.opt.param_groups[0]["momentum"] == momentum
    assert (m.distance is gm_distance) == (distance is gm_distance)
    assert m.net_on_real == (name == "idc")

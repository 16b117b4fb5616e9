"""CMI_emp against a float64 brute force, closed forms, and gradcheck w.r.t. the images."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cmidd.cmi import AGGREGATORS, CMIRegularizer, cmi_emp, proxy_log_probs, subsample_per_class
from cmidd.nets import create_net


def brute_force(p: torch.Tensor, labels: torch.Tensor) -> float:
    """Double loop in float64: centroid per class, then mean KL(p_i || q_{y_i})."""
    p = p.double()
    total, n = 0.0, p.shape[0]
    for c in labels.unique().tolist():
        rows = [i for i in range(n) if labels[i] == c]
        q = [sum(float(p[i, j]) for i in rows) / len(rows) for j in range(p.shape[1])]
        for i in rows:
            total += sum(float(p[i, j]) * (math.log(float(p[i, j])) - math.log(q[j])) for j in range(p.shape[1]))
    return total / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(12, 5, generator=g, dtype=torch.float64) * 2
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 0, 1, 2])  # unordered, unequal class sizes
    got = cmi_emp(F.log_softmax(logits, 1), labels, num_classes=4)  # class 3 is empty: ignored
    assert got.item() == pytest.approx(brute_force(F.softmax(logits, 1), labels), rel=1e-12)


def test_equal_probabilities_within_class_give_zero():
    base = F.log_softmax(torch.randn(3, 6, dtype=torch.float64), 1)
    log_p = base.repeat_interleave(4, dim=0)  # 4 identical rows per class
    labels = torch.arange(3).repeat_interleave(4)
    assert cmi_emp(log_p, labels, 3).item() == pytest.approx(0.0, abs=1e-15)


def test_two_point_closed_form():
    # One class, two points p=(a,1-a), p'=(b,1-b); q=((a+b)/2, ...): CMI = (KL(p||q)+KL(p'||q))/2 by hand.
    a, b = 0.9, 0.2
    p = torch.tensor([[a, 1 - a], [b, 1 - b]], dtype=torch.float64)
    m = (a + b) / 2
    kl = lambda x: x * math.log(x / m) + (1 - x) * math.log((1 - x) / (1 - m))  # noqa: E731
    expected = (kl(a) + kl(b)) / 2  # equals the Jensen-Shannon divergence of the two points
    assert cmi_emp(p.log(), torch.tensor([0, 0]), 1).item() == pytest.approx(expected, rel=1e-12)


def test_ipc1_is_zero():
    log_p = F.log_softmax(torch.randn(5, 7, dtype=torch.float64), 1)
    assert cmi_emp(log_p, torch.arange(5), 5).item() == pytest.approx(0.0, abs=1e-15)


def test_gradcheck_wrt_images():
    torch.manual_seed(0)
    proxy = create_net("ConvNetD1", 1, 3, 4, width=4).double()
    for p in proxy.parameters():
        p.requires_grad_(False)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    for space in ("features", "logits"):
        fn = lambda x, space=space: cmi_emp(proxy_log_probs(proxy, x, space, 0.7), labels, 3)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6)


def test_centroid_gradient_vanishes():
    # q_y = mean p is the minimizer of sum_i KL(p_i || q) over the simplex, so the gradient through the
    # (non-detached) centroid is exactly zero: attached and detached centroids give the same gradient.
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    g = torch.autograd.grad(cmi_emp(F.log_softmax(logits, 1), labels, 2), logits)[0]
    lp = F.log_softmax(logits, 1)
    q = torch.stack([lp[:2].exp().mean(0), lp[2:].exp().mean(0)]).detach()[labels]
    detached = (lp.exp() * (lp - q.log())).sum(1).mean()
    g_det = torch.autograd.grad(detached, logits)[0]
    assert torch.allclose(g, g_det, atol=1e-14)


def _proxies(n):
    nets = []
    for s in range(n):
        torch.manual_seed(s)
        nets.append(create_net("ConvNetD1", 1, 2, 4, width=4))
    return nets


def test_aggregators_registry_and_values():
    assert AGGREGATORS.names() == ["max", "mean", "random"]
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    nets = _proxies(3)
    each = [cmi_emp(proxy_log_probs(n.eval(), x), y, 2).item() for n in nets]
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert CMIRegularizer(nets, 2, "mean", k=3)(x, y, gen()).item() == pytest.approx(sum(each) / 3, rel=1e-6)
    assert CMIRegularizer(nets, 2, "max", k=3)(x, y, gen()).item() == pytest.approx(max(each), rel=1e-6)
    r = CMIRegularizer(nets, 2, "random")(x, y, gen()).item()
    assert any(r == pytest.approx(v, rel=1e-6) for v in each)


def test_proxies_frozen_and_one_forward_per_application():
    nets = _proxies(4)
    calls = []
    for n in nets:
        n.register_forward_pre_hook(lambda m, a: calls.append(1))
    reg = CMIRegularizer(nets, 2, "mean", k=2)
    assert all(not p.requires_grad for n in nets for p in n.parameters())
    x = torch.randn(6, 1, 4, 4, requires_grad=True)
    reg(x, torch.tensor([0, 0, 0, 1, 1, 1]), torch.Generator().manual_seed(0)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert len(calls) == 0  # space=features goes through embed(), never the classifier forward


def test_subsample_per_class():
    idx = subsample_per_class(3, 5, 2, torch.Generator().manual_seed(0))
    assert idx.shape == (6,)
    assert ((idx // 5) == torch.tensor([0, 0, 1, 1, 2, 2])).all()
    assert len(set(idx.tolist())) == 6


def test_bf16_proxy_is_close_to_fp32_and_differentiable():
    """cmi.precision=bf16: float32 log-probabilities near the fp32 ones; gradients still reach the images."""
    from cmidd.cmi import CMIRegularizer, proxy_log_probs
    from cmidd.nets import create_net

    torch.manual_seed(0)
    proxy = create_net("ConvNetD2", 3, 10, 16, width=16)
    x = torch.randn(40, 3, 16, 16, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(10)
    reg32 = CMIRegularizer([proxy], 4)
    reg16 = CMIRegularizer([proxy], 4, precision="bf16")
    lp32 = proxy_log_probs(proxy, x.detach())
    lp16 = proxy_log_probs(proxy, x.detach(), precision="bf16")
    assert lp16.dtype == torch.float32
    assert not torch.equal(lp16, lp32)  # it did run in bfloat16
    assert torch.allclose(lp16, lp32, atol=0.05)
    v32, v16 = reg32(x, labels, torch.Generator()), reg16(x, labels, torch.Generator())
    assert abs(v16.item() - v32.item()) <= 0.05 * v32.item()
    (g32,) = torch.autograd.grad(v32, x)
    (g16,) = torch.autograd.grad(v16, x)
    cos = torch.nn.functional.cosine_similarity(g32.flatten(), g16.flatten(), dim=0)
    assert cos > 0.95

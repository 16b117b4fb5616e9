"""cmidd.chunks (a frozen net on a CPU batch in threaded chunks) and the nets' bit-exact 2x2 average pool."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cmidd.chunks import apply_chunked, ce_param_grads, embed_nograd, map_chunks, rows_independent
from cmidd.nets import create_net
from cmidd.nets._layers import AvgPool2x2


def _net(arch: str = "ConvNetD2", channels: int = 3, size: int = 16, **kw) -> nn.Module:
    torch.manual_seed(0)
    return create_net(arch, channels, 10, size, **kw).requires_grad_(False)


def _with_threads(n: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        out = fn()
        assert torch.get_num_threads() == n  # restored after the pool's one-op-thread section
        return out
    finally:
        torch.set_num_threads(before)


def test_embed_nograd_threaded_chunks_equal_serial_chunks():
    """CPU: the chunks shared among Python threads (one op thread each) give the serial result, bit for bit."""
    net = _net(width=16)
    x = torch.randn(70, 3, 16, 16)
    threaded = _with_threads(2, lambda: embed_nograd(net, x, chunk=8))
    serial = _with_threads(1, lambda: embed_nograd(net, x, chunk=8))
    with torch.no_grad():
        whole = net.embed(x)
    assert torch.equal(threaded, serial)
    assert torch.allclose(threaded, whole, atol=1e-5)
    assert not threaded.requires_grad


def test_embed_nograd_works_in_a_forked_child():
    """The thread pool is rebuilt after fork (a child inherits no threads: the old pool would hang)."""
    net = _net("ConvNetD1", 1, 8, width=4)
    x = torch.randn(40, 1, 8, 8)
    expected = _with_threads(2, lambda: embed_nograd(net, x, chunk=8))  # builds the parent's pool
    with mp.get_context("fork").Pool(1) as pool:
        out = pool.apply_async(embed_nograd, (net, x, 8)).get(timeout=60)
    assert torch.equal(out, expected)


def test_map_chunks_keeps_order():
    out = _with_threads(2, lambda: map_chunks(lambda i: i * i, list(range(9))))
    assert out == [i * i for i in range(9)]


@pytest.mark.parametrize("arch", ["ConvNetD2", "ResNet18"])
def test_apply_chunked_matches_the_whole_batch_in_value_and_gradient(arch):
    """Forward and image gradient equal one whole-batch call (float32 rounding), and thread count is invisible."""
    net = _net(arch, size=16).eval()
    x0 = torch.randn(37, 3, 16, 16)  # 37 = 4 full chunks of 8 and a short one
    # a fixed upstream gradient: a loss computed outside (a matvec, say) may itself round differently with 2 threads
    # than with 1 on some CPUs (seen on an AMX Xeon), which says nothing about the chunks
    g_out = torch.randn(37, net.embed(x0[:1]).shape[1])

    def run(threads: int, chunked: bool):
        x = x0.clone().requires_grad_(True)

        def go():
            e = apply_chunked(net.embed, x, 8) if chunked else net.embed(x)
            e.backward(g_out)
            return e.detach(), x.grad

        return _with_threads(threads, go)

    e1, g1 = run(1, True)
    e2, g2 = run(2, True)
    ew, gw = run(2, False)
    assert torch.equal(e1, e2) and torch.equal(g1, g2)  # bit-identical whatever the thread count
    assert torch.allclose(e1, ew, rtol=1e-4, atol=1e-5)
    assert torch.allclose(g1, gw, rtol=1e-3, atol=1e-5 * gw.abs().max().item())


def test_apply_chunked_gradcheck_float64():
    """The chunked function's backward against finite differences (float64)."""
    net = _net("ConvNetD1", 1, 8, width=4).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_chunked(net.embed, t, 2), (x,))


def test_apply_chunked_without_a_graph_is_the_plain_call():
    net = _net("ConvNetD1", 1, 8, width=4)
    x = torch.randn(20, 1, 8, 8)  # no requires_grad: nothing to chunk for
    out = apply_chunked(net.embed, x, 4)
    assert torch.equal(out, net.embed(x)) and not out.requires_grad


def test_ce_param_grads_matches_the_whole_batch_float64_and_ignores_threads():
    """Chunked parameter gradients of the mean cross-entropy: the one-batch gradient in float64 (to 1e-12), and
    bit-identical whatever the thread count in float32 (GM's real side and inner loop depend on it)."""
    torch.manual_seed(0)
    net = create_net("ConvNetD2", 3, 10, 16, width=8).double().train()
    params = list(net.parameters())
    x, y = torch.randn(37, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (37,))
    whole = torch.autograd.grad(F.cross_entropy(net(x), y), params)
    chunked = _with_threads(2, lambda: ce_param_grads(net, params, x, y, chunk=8))
    assert len(chunked) == len(whole)
    for c, w in zip(chunked, whole):
        assert torch.allclose(c, w, rtol=1e-10, atol=1e-12)
    net32 = net.float()
    p32, x32 = list(net32.parameters()), x.float()
    one = _with_threads(1, lambda: ce_param_grads(net32, p32, x32, y, chunk=8))
    two = _with_threads(2, lambda: ce_param_grads(net32, p32, x32, y, chunk=8))
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert not any(g.requires_grad for g in two)


def test_ce_param_grads_takes_one_batch_when_rows_depend_on_each_other():
    """Batch norm in train mode: the batch statistics couple the rows, so chunks would change the gradient."""
    torch.manual_seed(0)
    net = create_net("ConvNetD2", 3, 10, 16, width=8, norm="batch").train()
    params = list(net.parameters())
    x, y = torch.randn(20, 3, 16, 16), torch.randint(0, 10, (20,))
    whole = torch.autograd.grad(F.cross_entropy(net(x), y), params)
    assert all(torch.equal(a, b) for a, b in zip(ce_param_grads(net, params, x, y, chunk=4), whole))


def test_rows_independent():
    bn = create_net("ConvNetD1", 1, 2, 8, width=4, norm="batch")
    assert not rows_independent(bn.train())
    assert rows_independent(bn.eval())  # running statistics: each row on its own
    assert rows_independent(create_net("ConvNetD1", 1, 2, 8, width=4).train())  # instance norm


@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (2, 4, 7, 9), (1, 1, 2, 2), (4, 128, 32, 32), (2, 3, 6, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_avgpool2x2_is_the_kernel_bit_for_bit(shape, dtype):
    """Forward and backward equal ``F.avg_pool2d(x, 2, 2)`` exactly (odd sizes take the kernel itself)."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(*shape, generator=gen, dtype=dtype) * 3).requires_grad_(True)
    ref = F.avg_pool2d(x, 2, 2)
    out = AvgPool2x2()(x)
    g = torch.randn(ref.shape, generator=gen, dtype=dtype)
    assert torch.equal(out, ref)
    assert torch.equal(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])


def test_avgpool2x2_double_backward_and_vmap():
    """GM differentiates through the net's gradients (double backward); ensembles vmap the nets."""
    pool = AvgPool2x2()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(pool, (x,))
    xs = torch.randn(4, 2, 3, 8, 8)
    ours = torch.func.vmap(torch.func.grad(lambda t: pool(t).square().sum()))(xs)
    ref = torch.func.vmap(torch.func.grad(lambda t: F.avg_pool2d(t, 2, 2).square().sum()))(xs)
    assert torch.equal(ours, ref)


def test_convnet_uses_the_fast_pool():
    net = create_net("ConvNet", 3, 10, 32)
    assert any(isinstance(m, AvgPool2x2) for m in net.modules())
    assert not any(isinstance(m, nn.AvgPool2d) for m in net.modules())

"""A frozen net applied to a large CPU batch in small chunks shared among threads, with or without a graph.

Why (2026-12-02, this project's 2-core x86_64 machine, ConvNet-3 w128 / ResNet18 at 32x32, median of 3 in
one process): a batch's activations spill out of the caches, and with two op threads every small op ends in
a barrier (when another job holds a core, the first thread waits for the other once per op). Chunks of 16
images, each run by one of two Python threads with one op thread, keep a chunk's activations in cache and
have no barrier:

- ConvNet on 2560 real images, no graph: one NCHW batch 3.6 s; channels_last chunks of 32, 1.81 s; NCHW
  chunks of 16, 1.54 s - the FLOP floor is 1.46 s (260 GFLOP at the 178 GFLOP/s of a 2-thread fp32 matmul).
- forward + backward to the images, one batch -> chunks of 16: ConvNet on 500 images 2.3 s -> 0.83 s;
  ResNet18 on 500 images 14.7 s -> 5.5 s (1111 GFLOP; the matmul rate gives 6.1 s).

NCHW, not channels_last: GroupNorm(C, C) (the nets' instance norm) is up to 20x slower in channels_last.
Each chunk is computed by one op thread the same way whichever Python thread runs it, so the result does not
depend on scheduling (seeded runs stay bit-identical). Other devices get one batch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CPU_CHUNK = 16

Fn = Callable[[Tensor], Tensor]


def _executor(workers: int) -> ThreadPoolExecutor:
    """One lazily built pool per worker count, kept for the process (threads are reused across calls)."""
    if workers not in _EXECUTORS:
        _EXECUTORS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="cmidd-chunk")
    return _EXECUTORS[workers]


_EXECUTORS: dict[int, ThreadPoolExecutor] = {}
# a forked child has none of the parent's threads: it must build its own pools
os.register_at_fork(after_in_child=_EXECUTORS.clear)


def map_chunks(fn: Callable, items: list) -> list:
    """``[fn(item) for item in items]``, shared among ``torch.get_num_threads()`` Python threads, one op thread each.

    ``torch.set_num_threads`` is process-wide: the caller's thread only waits while the pool works, and the
    count is restored afterwards. With one thread (or one item) the items run in the caller's thread.
    """
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1:
        return [fn(i) for i in items]
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return list(_executor(workers).map(fn, items))
    finally:
        torch.set_num_threads(prev)


def rows_independent(net: nn.Module) -> bool:
    """Whether ``net``'s output row i depends on input row i only (no batch norm computing batch statistics)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats)
                   for m in net.modules())


def _chunk_size(x: Tensor, chunk: int | None) -> int:
    if chunk is not None:
        return max(1, chunk)
    return CPU_CHUNK if x.device.type == "cpu" else max(1, x.shape[0])


def bf16(fn: Fn, device_type: str) -> Fn:
    """``fn`` under bfloat16 autocast, float32 out. Autocast is per thread, so it is set inside the call itself
    (which then also holds in the threads of ``map_chunks``)."""
    def run(x: Tensor) -> Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return fn(x).float()

    return run


def with_precision(fn: Fn, precision: Literal["fp32", "bf16"], device_type: str) -> Fn:
    """``fn`` itself for ``fp32``; ``bf16(fn)`` for ``bf16``."""
    return fn if precision == "fp32" else bf16(fn, device_type)


@torch.no_grad()
def embed_nograd(net: nn.Module, x: Tensor, chunk: int | None = None,
                 precision: Literal["fp32", "bf16"] = "fp32") -> Tensor:
    """``net.embed(x)`` without a graph, in chunks (CPU: ``CPU_CHUNK``; other devices: one batch).

    For the real side of a matching loss, which needs no gradient. A net whose rows depend on each other
    (batch statistics in train mode) must be called with ``chunk=x.shape[0]``. ``bf16``: under bfloat16
    autocast, float32 out.
    """
    parts = list(x.contiguous().split(_chunk_size(x, chunk)))
    embed = with_precision(net.embed, precision, x.device.type)

    def one(part: Tensor) -> Tensor:
        with torch.no_grad():  # grad mode is per thread
            return embed(part)

    return torch.cat(map_chunks(one, parts) if x.device.type == "cpu" else [one(p) for p in parts])


class _Chunked(torch.autograd.Function):
    """``fn`` of every chunk, each with its own graph; backward runs the chunks' backwards in the threads too."""

    @staticmethod
    def forward(ctx, x: Tensor, fn: Fn, chunk: int) -> Tensor:  # type: ignore[override]
        def one(part: Tensor) -> tuple[Tensor, Tensor]:
            with torch.enable_grad():
                leaf = part.detach().requires_grad_(True)
                return leaf, fn(leaf)

        ctx.graphs = map_chunks(one, list(x.detach().contiguous().split(chunk)))
        return torch.cat([out.detach() for _, out in ctx.graphs])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grads = grad.split([out.shape[0] for _, out in ctx.graphs])

        def one(item: tuple[tuple[Tensor, Tensor], Tensor]) -> Tensor:
            (leaf, out), g = item
            # retained: the chunks' graphs live (and die) with this node, so a retain_graph=True caller can
            # run backward again
            return torch.autograd.grad(out, leaf, g, retain_graph=True)[0]

        return torch.cat(map_chunks(one, list(zip(ctx.graphs, grads)))), None, None


def apply_chunked(fn: Fn, x: Tensor, chunk: int | None = None) -> Tensor:
    """``fn(x)`` differentiable in ``x``, computed in chunks of rows (CPU: ``CPU_CHUNK``; elsewhere one batch).

    ``fn`` must treat rows independently (no batch statistics) and have no parameter that needs a gradient:
    only ``x`` receives one (first-order only). Equal to ``fn(x)`` up to float rounding.
    """
    size = _chunk_size(x, chunk)
    if x.device.type != "cpu" or size >= x.shape[0] or not torch.is_grad_enabled() or not x.requires_grad:
        return fn(x)
    return _Chunked.apply(x, fn, size)


def ce_param_grads(net: nn.Module, params: list[Tensor], x: Tensor, y: Tensor,
                   chunk: int | None = None) -> list[Tensor]:
    """Gradients of ``cross_entropy(net(x), y)`` (the batch mean) in ``params``, no graph kept.

    On CPU, when ``net``'s rows are independent, each chunk's ``sum of losses / len(x)`` is differentiated in the
    threads of ``map_chunks`` and the chunks' gradients are added in chunk order (so the result does not depend
    on scheduling); equal to the one-batch gradient up to float rounding. Otherwise one batch.
    """
    size = _chunk_size(x, chunk)
    if x.device.type != "cpu" or size >= x.shape[0] or not rows_independent(net):
        return [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(x), y), params)]
    n = x.shape[0]

    def one(part: tuple[Tensor, Tensor]) -> tuple[Tensor, ...]:
        with torch.enable_grad():
            return torch.autograd.grad(F.cross_entropy(net(part[0]), part[1], reduction="sum") / n, params)

    per_chunk = map_chunks(one, list(zip(x.detach().contiguous().split(size), y.split(size))))
    return [sum(gs[1:], gs[0]) for gs in zip(*per_chunk)]

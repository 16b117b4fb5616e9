"""The one interface every DD method implements, and the context it is built from."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from ..data import RealPool
from ..training import draw_seed  # noqa: F401  (the methods draw their seeds with it)

if TYPE_CHECKING:
    from ..config import MethodCfg, NetCfg


@dataclass(frozen=True)
class MethodContext:
    """What a method needs to build itself: its config, the DD net, the real data and the device."""

    cfg: MethodCfg
    net: NetCfg
    pool: RealPool
    channels: int
    num_classes: int
    im_size: int
    device: torch.device
    experts: list[Tensor] | None = None  # MTT's expert trajectories, (epochs + 1, P) each


class Method(Protocol):
    """A DD loss over the synthetic images.

    The loop calls, per iteration: ``begin_iteration`` once, then ``steps_per_iteration`` times
    ``loss`` -> image update -> ``after_update``; checkpoints call ``state_dict``, ``--resume``
    ``load_state_dict``. All randomness comes from ``gen``.
    """

    steps_per_iteration: int

    def begin_iteration(self, gen: torch.Generator) -> None:
        """Start an iteration (e.g. draw a fresh randomly initialized network)."""

    def loss(self, syn: Tensor, syn_y: Tensor, gen: torch.Generator, classes: list[int] | None = None) -> Tensor:
        """Scalar DD loss, differentiable w.r.t. ``syn`` (C*ipc, C, H, W), class-ordered.

        ``classes``: only these classes' part of the loss (a sum over classes), for a data-parallel worker;
        ``gen`` is consumed exactly as for all classes, so that every worker stays in lockstep.
        """

    def after_update(self, syn: Tensor, syn_y: Tensor, gen: torch.Generator) -> None:
        """Work after the image update (e.g. train the matching net on the synthetic set)."""

    # No-op hooks (a method that subclasses the protocol inherits them): state that outlives an iteration,
    # for checkpoints. DM and GM re-draw their net every iteration and keep none; MTT keeps its step size.
    def state_dict(self) -> dict:
        """The method's own state that outlives an iteration, for checkpoints ({} when there is none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (resume stays exact)."""
        return None


def class_mask(y: Tensor, classes: list[int]) -> Tensor:
    """(N,) bool: which rows of ``y`` belong to ``classes``."""
    return torch.isin(y, torch.as_tensor(classes, device=y.device))


def reinit_(net: nn.Module, seed: int) -> nn.Module:
    """Re-initialize every layer of ``net`` in place from ``seed`` without touching the global RNG.

    Cheaper than building a new net each iteration, and identical to building one under that seed.
    """
    device = next(net.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in net.modules():
            if m is not net and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return net


# On CPU a large no-grad batch runs fastest in small channels_last chunks whose activations stay in cache: a
# ConvNet (width 128) on 2560 real 32x32 images took 3.6 s as one NCHW batch and 0.8 s in NHWC chunks of 32
# on this project's 2-core machine. Same float32 math; only the batching and the memory layout differ.
CPU_CHUNK = 32


def _embed_chunks(net: nn.Module, parts: tuple[Tensor, ...], workers: int) -> list[Tensor]:
    """``net.embed`` of every chunk, the chunks shared among ``workers`` Python threads, one op thread each.

    Why (2026-12-02, 1536 real 32x32 images, ConvNet-3 w128, 2 cores shared with other jobs, load 4-5, median
    of 3 in one process, vs the reference's NCHW batches of 256 = 1.00): chunks of 32 with 2 op threads 0.56,
    chunks of 256 0.86; 2 Python threads x 1 op thread on chunks of 32: 0.47 (16: 0.53, 64: 0.56, 128: 0.80).
    With two op threads every small op ends in a barrier; when another job holds a core, the thread that
    arrives first waits for the other to be scheduled again, once per op (at load 7, the 2560-image real side
    took 20 s instead of 2 s). One op thread per chunk has no barrier, so the chunks run at the speed of the
    cores this process gets. Each chunk is computed by one thread the same way whichever thread it is, so the
    result does not depend on scheduling (seeded runs stay bit-identical).
    """
    def one(part: Tensor) -> Tensor:
        with torch.no_grad():  # grad mode is per thread
            return net.embed(part)

    if workers <= 1 or len(parts) <= 1:
        return [one(p) for p in parts]
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # process-wide: the caller's thread only waits below
    try:
        return list(_executor(workers).map(one, parts))
    finally:
        torch.set_num_threads(prev)


_EXECUTORS: dict[int, ThreadPoolExecutor] = {}
# a forked child has none of the parent's threads: it must build its own pools
os.register_at_fork(after_in_child=_EXECUTORS.clear)


def _executor(workers: int) -> ThreadPoolExecutor:
    """One lazily built pool per worker count, kept for the process (threads are reused across calls)."""
    if workers not in _EXECUTORS:
        _EXECUTORS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="cmidd-embed")
    return _EXECUTORS[workers]


@torch.no_grad()
def embed_nograd(net: nn.Module, x: Tensor, chunk: int | None = None) -> Tensor:
    """``net.embed(x)`` without a graph, in chunks (CPU: ``CPU_CHUNK``; other devices: one batch).

    Use it for the real side of a matching loss, which needs no gradient. Put the net in channels_last
    (``net.to(memory_format=torch.channels_last)``) for the full speed-up. On CPU the chunks run in
    ``torch.get_num_threads()`` Python threads with one op thread each (see ``_embed_chunks``); a net whose
    rows depend on each other (batch statistics) must be called with ``chunk=x.shape[0]``.
    """
    on_cpu = x.device.type == "cpu"
    if chunk is None:
        chunk = CPU_CHUNK if on_cpu else max(1, x.shape[0])
    x = x.contiguous(memory_format=torch.channels_last)
    parts = x.split(chunk)
    workers = min(torch.get_num_threads(), len(parts)) if on_cpu else 1
    return torch.cat(_embed_chunks(net, parts, workers))

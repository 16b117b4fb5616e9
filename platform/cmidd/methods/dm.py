"""Distribution matching (DM, Zhao & Bilen 2023): match per-class mean embeddings of a random net."""

from __future__ import annotations

import torch
from torch import Tensor

from ..augment import DSAParams, dsa_classes
from ..nets import create_net
from ._registry import METHODS
from ..chunks import apply_chunked, embed_nograd, rows_independent, with_precision
from .base import Method, MethodContext, class_mask, draw_seed, reinit_


def class_means(emb: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(C, D) mean embedding per class, batched with ``index_add`` (classes without rows give 0)."""
    sums = torch.zeros(num_classes, emb.shape[1], dtype=emb.dtype, device=emb.device).index_add(0, labels, emb)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(emb.dtype)
    return sums / counts[:, None]


def dm_loss(real_emb: Tensor, real_y: Tensor, syn_emb: Tensor, syn_y: Tensor, num_classes: int) -> Tensor:
    """DM loss: sum over classes of the squared distance between real and synthetic mean embeddings.

    Args:
        real_emb: (Nr, D) embeddings of real images; real_y: (Nr,) labels.
        syn_emb: (Ns, D) embeddings of synthetic images; syn_y: (Ns,) labels.
        num_classes: C.

    Returns:
        Scalar ``sum_c ||mean(real_c) - mean(syn_c)||^2``.
    """
    diff = class_means(real_emb, real_y, num_classes) - class_means(syn_emb, syn_y, num_classes)
    return (diff**2).sum()


class DM(Method):
    """DM with a fresh randomly initialized embedder per iteration; all classes in one forward each."""

    steps_per_iteration = 1

    def __init__(self, ctx: MethodContext) -> None:
        self.ctx = ctx
        self.net = create_net(ctx.net.name, ctx.channels, ctx.num_classes, ctx.im_size, **ctx.net.kwargs())
        self.net.to(ctx.device).train()
        self.net.requires_grad_(False)  # gradients flow to the images only
        self.dsa_params = DSAParams(strategy=ctx.cfg.dsa_strategy, mode=ctx.cfg.dsa_mode)
        # batch statistics make a row's embedding depend on the others: such nets embed all rows, then slice
        self.batch_stats = not rows_independent(self.net)

    def begin_iteration(self, gen: torch.Generator) -> None:
        reinit_(self.net, draw_seed(gen))

    def loss(self, syn: Tensor, syn_y: Tensor, gen: torch.Generator, classes: list[int] | None = None) -> Tensor:
        real, real_y = self.ctx.pool.sample_all(self.ctx.cfg.batch_real, gen)
        # siamese per class (reference DM): class c's real and synthetic rows share one transform, drawn
        # for every class so that ``gen`` is consumed the same in every worker
        seeds = [draw_seed(gen) for _ in range(self.ctx.num_classes)] if self.ctx.cfg.dsa else None
        keep_r = keep_s = slice(None)
        if classes is not None:  # a worker's share: DM's loss is a sum over classes
            keep_r, keep_s = class_mask(real_y, classes), class_mask(syn_y, classes)
            if not self.batch_stats:  # rows are independent: drop the other classes before any work on them
                real, syn = real[keep_r], syn[keep_s]
                real_y, syn_y, keep_r, keep_s = real_y[keep_r], syn_y[keep_s], slice(None), slice(None)
        if seeds is not None:  # a row's transform depends only on its class's seed, not on the other rows
            real = dsa_classes(real, real_y, seeds, self.dsa_params)
            syn = dsa_classes(syn, syn_y, seeds, self.dsa_params)
        if not isinstance(keep_r, slice):  # batch statistics: all rows embedded together, then sliced
            real_y, syn_y = real_y[keep_r], syn_y[keep_s]
        # the real side needs no graph; chunks only where rows are independent (no batch statistics)
        precision = self.ctx.cfg.precision  # bf16: both sides under autocast, embeddings back in float32
        real_emb = embed_nograd(self.net, real, real.shape[0] if self.batch_stats else None, precision)[keep_r]
        # the synthetic side in chunks too, each with its own graph (see cmidd.chunks), unless rows interact
        embed = with_precision(self.net.embed, precision, syn.device.type)
        syn_emb = (embed(syn) if self.batch_stats else apply_chunked(embed, syn))[keep_s]
        return dm_loss(real_emb, real_y, syn_emb, syn_y, self.ctx.num_classes)

    def after_update(self, syn: Tensor, syn_y: Tensor, gen: torch.Generator) -> None:
        return None

@METHODS.register("dm")
def build_dm(ctx: MethodContext) -> DM:
    return DM(ctx)

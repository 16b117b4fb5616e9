"""Gradient matching (DC, Zhao et al. 2021; with DSA on it is DSA, Zhao & Bilen 2021).

Per iteration a fresh net is drawn; for ``outer_loop`` steps the synthetic images of each class are moved so
that the net's gradient on them matches its gradient on real images of that class, and between steps the
net is trained on the synthetic set for ``inner_loop`` steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..augment import DSAParams, dsa, dsa_classes
from ..chunks import ce_param_grads
from ..device import to_device
from ..nets import create_net
from ._registry import METHODS
from .base import Method, MethodContext, draw_seed, reinit_
from .gm_batched import batched_match


def gm_distance(g_real: list[Tensor], g_syn: list[Tensor], lead: int = 0) -> Tensor:
    """Layer-wise gradient distance: sum over weight tensors and output units of ``1 - cos``.

    One-dimensional tensors (biases, norm affines) are skipped, as in the DC formulation.

    Args:
        g_real, g_syn: per-parameter gradients of the same shapes.
        lead: leading batch dimensions (1: one gradient per class, ``cmidd.methods.gm_batched``), summed over.

    Returns:
        Scalar distance >= 0.
    """
    total = g_syn[0].new_zeros(())
    for gr, gs in zip(g_real, g_syn):
        if gs.dim() - lead == 1:
            continue
        gr, gs = gr.flatten(lead + 1), gs.flatten(lead + 1)
        cos = (gr * gs).sum(-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


def mse_distance(g_real: list[Tensor], g_syn: list[Tensor], lead: int = 0) -> Tensor:
    """IDC's gradient distance: the summed squared difference over every parameter's gradient (and ``lead``)."""
    return sum(((gr - gs) ** 2).sum() for gr, gs in zip(g_real, g_syn))


class GM(Method):
    """Gradient matching over a net that is re-drawn each iteration and trained in between.

    Args:
        ctx: the method context.
        distance: gradient distance (``gm_distance``: DC's layer-wise 1 - cos; ``mse_distance``: IDC's).
        net_on_real: train the net between outer steps on real data (IDC) instead of the synthetic set (DC).
        net_momentum: SGD momentum of the net's training between outer steps: 0 in DC/DSA's reference
            (``optimizer_net = SGD(net.parameters(), lr=lr_net)`` in its main.py), 0.9 in IDC's.
        class_by_class: one image update per class per outer step (IDC's reference) instead of one for all
            classes (DC/DSA's).
    """

    def __init__(self, ctx: MethodContext, distance=gm_distance, net_on_real: bool = False,
                 net_momentum: float = 0.0, class_by_class: bool = False) -> None:
        self.ctx, self.distance, self.net_on_real, self.net_momentum = ctx, distance, net_on_real, net_momentum
        self.class_by_class = class_by_class
        self.steps_per_iteration = ctx.cfg.outer_loop
        self.net = create_net(ctx.net.name, ctx.channels, ctx.num_classes, ctx.im_size, **ctx.net.kwargs())
        self.net.to(ctx.device).train()
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.dsa_params = DSAParams(strategy=ctx.cfg.dsa_strategy, mode=ctx.cfg.dsa_mode)
        self.opt = torch.optim.SGD(self.params, lr=ctx.cfg.lr_net, momentum=self.net_momentum)
        self._step = 0
        impl = ctx.cfg.gm_impl
        self.impl = impl if impl != "auto" else "batched" if ctx.device.type == "cuda" else "loop"

    def begin_iteration(self, gen: torch.Generator) -> None:
        reinit_(self.net, draw_seed(gen))
        self.opt = torch.optim.SGD(self.params, lr=self.ctx.cfg.lr_net, momentum=self.net_momentum)
        self._step = 0

    def _aug(self, x: Tensor, seed: int, shared: bool = False) -> Tensor:
        """DSA when on; ``shared`` (matching): one transform for the batch, as the reference's batchmode."""
        return dsa(x, seed, self.dsa_params, shared=shared) if self.ctx.cfg.dsa else x

    def loss(self, syn: Tensor, syn_y: Tensor, gen: torch.Generator, classes: list[int] | None = None) -> Tensor:
        if self.impl == "batched":
            return self._loss_batched(syn, syn_y, gen, classes)
        return self._loss_loop(syn, syn_y, gen, classes)

    def _aug_classes(self, x: Tensor, local: Tensor, seeds: list[int]) -> Tensor:
        """DSA per class (row i gets ``seeds[local[i]]``'s shared transform), as ``_aug(..., shared=True)``."""
        return dsa_classes(x, local, seeds, self.dsa_params) if self.ctx.cfg.dsa else x

    def _loss_batched(self, syn: Tensor, syn_y: Tensor, gen: torch.Generator, classes: list[int] | None) -> Tensor:
        """All classes' gradients in batched passes (``gm_batched``); ``gen`` consumed as by the loop."""
        c_num, pool = self.ctx.num_classes, self.ctx.pool
        idx, seeds = [], []
        for c in range(c_num):
            idx.append(pool.sample_index(c, self.ctx.cfg.batch_real, gen))
            seeds.append(draw_seed(gen))
        keep = list(range(c_num)) if classes is None else [c for c in range(c_num) if c in classes]
        return batched_match(self.net, pool.images, idx, seeds, syn, syn_y, c_num, keep,
                             self.ctx.cfg.gm_class_chunk, self._aug_classes, self.distance)

    def _loss_loop(self, syn: Tensor, syn_y: Tensor, gen: torch.Generator, classes: list[int] | None) -> Tensor:
        """The reference's per-class loop: one real and one synthetic backward per class."""
        c_num, ipc = self.ctx.num_classes, syn.shape[0] // self.ctx.num_classes
        total = syn.new_zeros(())
        for c in range(c_num):
            real = self.ctx.pool.sample(c, self.ctx.cfg.batch_real, gen)
            seed = draw_seed(gen)
            if classes is not None and c not in classes:  # another worker's class; gen was consumed alike
                continue
            y_real = torch.full((real.shape[0],), c, device=real.device)
            # the real side needs no graph: its gradient in chunks shared among threads (cmidd.chunks)
            g_real = ce_param_grads(self.net, self.params, self._aug(real, seed, shared=True), y_real)
            syn_c = syn[c * ipc : (c + 1) * ipc]
            loss_syn = F.cross_entropy(self.net(self._aug(syn_c, seed, shared=True)), syn_y[c * ipc : (c + 1) * ipc])
            g_syn = torch.autograd.grad(loss_syn, self.params, create_graph=True)
            total = total + self.distance(g_real, list(g_syn))
        return total

    def after_update(self, syn: Tensor, syn_y: Tensor, gen: torch.Generator) -> None:
        self._step += 1
        if self._step >= self.steps_per_iteration:  # the last outer step needs no net update
            return
        x_all, y_all = syn.detach(), syn_y
        per_class = max(1, self.ctx.cfg.batch_train // self.ctx.num_classes)
        for _ in range(self.ctx.cfg.inner_loop):
            if self.net_on_real:
                x, y = self.ctx.pool.sample_all(per_class, gen)
            else:
                idx = to_device(torch.randperm(x_all.shape[0], generator=gen)[: self.ctx.cfg.batch_train],
                                x_all.device)
                x, y = x_all[idx], y_all[idx]
            grads = ce_param_grads(self.net, self.params, self._aug(x, draw_seed(gen)), y)
            for p, g in zip(self.params, grads):
                p.grad = g
            self.opt.step()

@METHODS.register("gm")
def build_gm(ctx: MethodContext) -> GM:
    return GM(ctx)

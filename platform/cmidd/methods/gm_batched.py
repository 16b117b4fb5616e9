"""Gradient matching's per-class gradients for all classes at once (``method.gm_impl: batched``; ``auto``,
the default, picks it on CUDA and the per-class loop elsewhere).

The reference (and ``method.gm_impl: loop``) runs, per class c and outer step, a forward and backward of the
net on class c's real batch and another, with the graph kept, on class c's synthetic images: 2 x C small passes,
bound by kernel launches on a GPU. Here the classes are a ``torch.func.vmap`` dimension over
``grad(functional_call(net))``: one batched pass for all classes' real batches (no graph) and one for all
synthetic ones (graph to the images). Each class keeps its own batch, so BatchNorm in train mode normalizes
class c's rows with class c's batch statistics, exactly as the loop does.

Equal to the loop up to float rounding (tests/test_gm_batched.py: float64, with and without DSA, instance and
batch norm); the generator is consumed in the loop's order (per class: the real draw, then its DSA seed).

Differences on purpose:

* classes with fewer real images than ``batch_real`` (a small pool) are padded to the largest draw with
  weight-0 rows when the net's rows are independent; with batch statistics the classes are grouped by draw
  size instead (padding would change the statistics);
* the matching passes do not update BatchNorm running statistics (vmap cannot write them): the GM net runs
  in train mode only and is re-drawn every iteration, so they are never read;
* the images and labels of a pass reach the device in one copy (pinned, non-blocking on CUDA): no host sync.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..chunks import rows_independent
from ..device import to_device

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@contextmanager
def batch_stats_only(net: nn.Module) -> Iterator[None]:
    """BatchNorm layers in train mode normalize with the batch's statistics without writing running ones.

    Same output (train mode always uses the batch's statistics); needed under vmap, which cannot write an
    unbatched buffer from batched values.
    """
    flipped = [m for m in net.modules() if isinstance(m, _BN) and m.training and m.track_running_stats]
    try:
        for m in flipped:
            m.track_running_stats = False
        yield
    finally:
        for m in flipped:
            m.track_running_stats = True


def class_grads(net: nn.Module, x: Tensor, y: Tensor, w: Tensor) -> list[Tensor]:
    """Per-class gradients of ``sum_i w[k, i] * CE(net(x[k, i]), y[k, i])`` in the net's trainable parameters.

    Args:
        net: the network (its parameters are read, not differentiated by the outer autograd).
        x: (K, B, C, H, W) images, class k's batch in row k; may require grad (the graph is then kept to it).
        y: (K, B) labels; w: (K, B) row weights (1 / class batch size, 0 for padding).

    Returns:
        One (K, *p.shape) tensor per trainable parameter, in ``net.parameters()`` order.
    """
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in named}
    buffers = dict(net.named_buffers())

    def loss(p: dict[str, Tensor], xk: Tensor, yk: Tensor, wk: Tensor) -> Tensor:
        out = functional_call(net, (p, buffers), (xk,))
        return (F.cross_entropy(out, yk, reduction="none") * wk).sum()

    with batch_stats_only(net):
        g = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x, y, w)
    return [g[n] for n, _ in named]


def class_groups(keep: list[int], sizes: list[int], independent: bool, chunk: int) -> list[list[int]]:
    """The classes of each batched pass: at most ``chunk`` classes; with batch statistics, equal draw sizes."""
    keep = [c for c in keep if sizes[c] > 0]
    if independent:
        buckets = [keep]
    else:
        by_size: dict[int, list[int]] = {}
        for c in keep:
            by_size.setdefault(sizes[c], []).append(c)
        buckets = list(by_size.values())
    return [b[i : i + chunk] for b in buckets for i in range(0, len(b), chunk)]


def batched_match(net: nn.Module, images: Tensor, idx: list[Tensor], seeds: list[int], syn: Tensor,
                  syn_y: Tensor, num_classes: int, keep: list[int], chunk: int,
                  aug: Callable[[Tensor, Tensor, list[int]], Tensor],
                  distance: Callable[..., Tensor]) -> Tensor:
    """The summed matching distance of classes ``keep``, every class of a group in one vmapped pass.

    Args:
        net: the matching net (train mode).
        images: the real pool's images (class-sorted, on the device); ``idx[c]``: class c's drawn rows (CPU).
        seeds: class c's DSA seed (one transform shared by its real and synthetic rows).
        syn, syn_y: the class-ordered synthetic images and labels, ``len(syn) // num_classes`` per class.
        keep: the classes whose terms are summed; chunk: classes per pass.
        aug: ``aug(x, local_class_of_row (CPU), seeds_of_local_classes)`` (the identity without DSA).
        distance: ``distance(g_real, g_syn, lead=1)`` summed over the leading class dimension.
    """
    device, ipc = images.device, syn.shape[0] // num_classes
    sizes = [int(i.numel()) for i in idx]
    total = syn.new_zeros(())
    syn_c = syn.view(num_classes, ipc, *syn.shape[1:])
    syn_yc = syn_y.view(num_classes, ipc)
    for group in class_groups(keep, sizes, rows_independent(net), chunk):
        k, n = len(group), max(sizes[c] for c in group)
        cpu = torch.device("cpu")  # the draws and labels are packed on the host, then copied once
        pos = torch.arange(n, device=cpu)
        rows = torch.stack([idx[c][pos % sizes[c]] for c in group])  # (k, n): padded by cycling the draw
        valid = torch.stack([pos < sizes[c] for c in group])
        labels = torch.tensor(group, device=cpu).repeat_interleave(n).view(k, n)
        # one copy to the device for the pass's rows, labels and row weights
        packed = to_device(torch.stack([rows, labels, valid.long(), torch.tensor([sizes[c] for c in group], device=cpu)
                                        .unsqueeze(1).expand(k, n)]), device)
        real = images[packed[0].reshape(-1)]
        w_real = packed[2].to(syn.dtype) / packed[3].to(syn.dtype)
        local = torch.arange(k, device=cpu).repeat_interleave(n)  # dsa_classes reads the class of a row on the host
        group_seeds = [seeds[c] for c in group]
        real = aug(real, local, group_seeds).view(k, n, *real.shape[1:])
        if group == list(range(group[0], group[0] + k)):
            xs, ys = syn_c[group[0] : group[0] + k], syn_yc[group[0] : group[0] + k]
        else:
            sel = to_device(torch.tensor(group, device=cpu), device)
            xs, ys = syn_c[sel], syn_yc[sel]
        xs = aug(xs.reshape(k * ipc, *syn.shape[1:]), torch.arange(k, device=cpu).repeat_interleave(ipc),
                 group_seeds)
        w_syn = syn.new_full((k, ipc), 1.0 / ipc)
        with torch.no_grad():  # the real side needs no graph (torch.func.grad still differentiates inside)
            g_real = class_grads(net, real, packed[1], w_real)
        g_syn = class_grads(net, xs.view(k, ipc, *syn.shape[1:]), ys, w_syn)
        total = total + distance(g_real, g_syn, lead=1)
    return total

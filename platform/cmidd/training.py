"""Train and test a classifier: the shared inner routine of evaluation and proxy pre-training."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import DSAParams, dsa


def draw_seed(gen: torch.Generator) -> int:
    """A 31-bit seed drawn from ``gen`` (DSA's shared seed, a net's re-initialization)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def lr_at(epoch: int, epochs: int, lr: float, lr_decay: float) -> float:
    """The DD protocol's step schedule: ``lr`` for the first ``epochs // 2`` epochs (1-based), then x ``lr_decay``."""
    return lr * lr_decay if epoch > epochs // 2 else lr


def augment_batch(xb: Tensor, gen: torch.Generator, dsa_params: DSAParams | None) -> Tensor:
    """DSA on a training batch with a seed drawn from ``gen`` (per-image parameters); None = unchanged."""
    return xb if dsa_params is None else dsa(xb, draw_seed(gen), dsa_params)


def seeded_net(build, seed: int, device: torch.device) -> nn.Module:
    """Build a net with its initialization drawn from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build()
    return net.to(device)


def train_classifier(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch: int,
    gen: torch.Generator,
    lr_decay: float = 1.0,
    dsa_params: DSAParams | None = None,
    snapshot_epochs: tuple[int, ...] = (),
    on_epoch: Callable[[int], None] | None = None,
) -> list[dict[str, Tensor]]:
    """Train ``net`` with SGD on (x, y) in shuffled mini-batches.

    Args:
        net: the model, already on x's device, trained in place.
        x: (N, C, H, W) images; y: (N,) labels.
        epochs: passes over the data; the lr is multiplied by ``lr_decay`` once, at ``epochs // 2``.
        gen: CPU generator for shuffling and DSA seeds.
        dsa_params: DSA augmentation of every batch (None = no augmentation).
        snapshot_epochs: epochs (1-based) after which a CPU copy of the state dict is returned.
        on_epoch: called with the epoch (1-based) after each epoch (progress lines).

    Returns:
        The requested snapshots, in order of ``snapshot_epochs``.
    """
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = x.shape[0]
    snapshots = []
    net.train()
    for epoch in range(1, epochs + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, epochs, lr, lr_decay)
        perm = torch.randperm(n, generator=gen).to(x.device)
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            loss = F.cross_entropy(net(augment_batch(x[idx], gen, dsa_params)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch in snapshot_epochs:
            snapshots.append({k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
        if on_epoch is not None:
            on_epoch(epoch)
    return snapshots


@torch.no_grad()
def predict_proba(net: nn.Module, x: Tensor, batch: int = 1024) -> Tensor:
    """(N, num_classes) softmax outputs of ``net`` in eval mode."""
    net.eval()
    out = torch.cat([F.softmax(net(x[i : i + batch]), dim=1) for i in range(0, x.shape[0], batch)])
    return out


def accuracy(net: nn.Module, x: Tensor, y: Tensor, batch: int = 1024) -> float:
    """Top-1 accuracy of ``net`` on (x, y), in [0, 1]."""
    return float((predict_proba(net, x, batch).argmax(1) == y).float().mean())

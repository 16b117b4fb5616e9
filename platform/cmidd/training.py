"""Train and test a classifier: the shared inner routine of evaluation and proxy pre-training."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import DSAParams, dsa


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
        if epoch == epochs // 2 + 1 and lr_decay != 1.0:
            for group in opt.param_groups:
                group["lr"] = lr * lr_decay
        perm = torch.randperm(n, generator=gen).to(x.device)
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            xb = x[idx]
            if dsa_params is not None:
                xb = dsa(xb, int(torch.randint(0, 2**31 - 1, (1,), generator=gen)), dsa_params)
            loss = F.cross_entropy(net(xb), y[idx])
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

"""The DD evaluation protocol: train fresh nets of each architecture on a set, test on the real test split.

Each (architecture, seed) trains from scratch with SGD (DSA on by default, the lr decayed once at half the
epochs) and reports test accuracy; results are mean +- std over ``num_eval`` seeds, plus the mean over
architectures (``acc/cross_arch_mean``). Baselines: ``random-real`` (ipc random real images per class) and
``full`` (the whole train split).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .augment import DSAParams
from .config import EvalCfg
from .data import Dataset, RealPool
from .nets import create_net
from .training import accuracy, seeded_net, train_classifier

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Test accuracies per architecture (one per seed)."""

    accs: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, arch: str) -> float:
        return statistics.fmean(self.accs[arch])

    def std(self, arch: str) -> float:
        a = self.accs[arch]
        return statistics.pstdev(a) if len(a) > 1 else 0.0

    @property
    def cross_arch_mean(self) -> float:
        return statistics.fmean(self.mean(a) for a in self.accs)

    def metrics(self) -> dict[str, float]:
        """``acc/<arch>``, ``acc_std/<arch>`` and ``acc/cross_arch_mean`` (the MLflow metric names)."""
        out: dict[str, float] = {}
        for a in self.accs:
            out[f"acc/{a}"], out[f"acc_std/{a}"] = self.mean(a), self.std(a)
        out["acc/cross_arch_mean"] = self.cross_arch_mean
        return out

    def rows(self, set_name: str) -> list[dict]:
        """Rows for results tables: set, arch, acc_mean, acc_std, n."""
        return [
            {"set": set_name, "arch": a, "acc_mean": self.mean(a), "acc_std": self.std(a), "n": len(v)}
            for a, v in self.accs.items()
        ]


def evaluate(
    images: Tensor,
    labels: Tensor,
    data: Dataset,
    cfg: EvalCfg,
    seed: int,
    device: torch.device | str = "cpu",
    archs: list[str] | None = None,
) -> EvalResult:
    """Evaluate a training set (synthetic or real) with the DD protocol.

    Args:
        images: (N, C, H, W) normalized training images; labels: (N,).
        data: gives the real test split and the shape of the nets.
        cfg: epochs, optimizer, DSA, seeds per architecture.
        seed: base seed; (architecture index, eval index) derive each model's seed.
        archs: architectures (default ``cfg.archs``).

    Returns:
        EvalResult with ``cfg.num_eval`` accuracies per architecture.
    """
    device = torch.device(device)
    x, y = images.detach().to(device), labels.to(device)
    x_test, y_test = data.test_x.to(device), data.test_y.to(device)
    dsa_params = DSAParams(strategy=cfg.dsa_strategy) if cfg.dsa else None
    result = EvalResult()
    for ai, arch in enumerate(archs or cfg.archs):
        accs = []
        for e in range(cfg.num_eval):
            model_seed = seed * 1_000_003 + ai * 1_009 + e
            net = seeded_net(
                lambda: create_net(arch, data.channels, data.num_classes, data.im_size), model_seed, device
            )
            gen = torch.Generator().manual_seed(model_seed)
            train_classifier(
                net, x, y, epochs=cfg.epochs_for(arch), lr=cfg.lr, momentum=cfg.momentum,
                weight_decay=cfg.weight_decay, batch=cfg.batch, gen=gen, lr_decay=cfg.lr_decay,
                dsa_params=dsa_params,
            )
            accs.append(accuracy(net, x_test, y_test))
            log.info("eval %s seed %d/%d: acc %.4f", arch, e + 1, cfg.num_eval, accs[-1])
        result.accs[arch] = accs
    return result


def baseline_set(name: str, data: Dataset, ipc: int, seed: int, device: torch.device | str = "cpu"):
    """The training set of a baseline: ``random-real`` (ipc per class) or ``full`` (the train split)."""
    if name == "full":
        return data.train_x, data.train_y
    pool = RealPool(data.train_x, data.train_y, data.num_classes, torch.device(device))
    return pool.random_init(ipc, torch.Generator().manual_seed(seed))

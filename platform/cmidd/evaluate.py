"""The DD evaluation protocol: train fresh nets of each architecture on a set, test on the real test split.

Each (architecture, seed) trains from scratch with SGD (DSA on by default, the lr decayed once at half the
epochs) and reports test accuracy; results are mean +- std over ``num_eval`` seeds, plus the mean over
architectures (``acc/cross_arch_mean``). With ``cfg.ensemble`` the M = archs x seeds models also vote as one
averaged-softmax ensemble (``acc/ensemble``, ``ece/ensemble``); with ``cfg.batched`` (``vmap``, or ``auto`` on
CUDA) the seeds of one architecture train together (``cmidd.ensemble.train_seeds``; BatchNorm nets loop).
Baselines: ``random-real`` (ipc random real images per class) and ``full`` (the whole train split).
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .augment import DSAParams
from .data import Dataset, RealPool
from .ensemble import ensemble_scores, train_seeds
from .names import CROSS_ARCH_MEAN, CROSS_ARCH_STD
from .nets import create_net
from .progress import Progress, shown
from .training import predict_proba, seeded_net

if TYPE_CHECKING:
    from .config import EvalCfg

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"  # the arch name of the ensemble's row in results tables


@dataclass
class EvalResult:
    """Test accuracies per architecture (one per seed), and the averaged-softmax ensemble of all models.

    ``modes`` says per architecture how its seeds were trained (``vmap`` or ``loop (<reason>)``).
    """

    accs: dict[str, list[float]] = field(default_factory=dict)
    ensemble_acc: float | None = None
    ensemble_ece: float | None = None
    modes: dict[str, str] = field(default_factory=dict)
    class_acc: list[float] = field(default_factory=list)  # test recall per class, mean over all models

    def mean(self, arch: str) -> float:
        return statistics.fmean(self.accs[arch])

    def std(self, arch: str) -> float:
        a = self.accs[arch]
        return statistics.pstdev(a) if len(a) > 1 else 0.0

    @property
    def cross_arch_mean(self) -> float:
        return statistics.fmean(self.mean(a) for a in self.accs)

    @property
    def cross_arch_std(self) -> float:
        """Seed spread of ``cross_arch_mean``: the std over seeds of seed i's mean over architectures (one
        architecture: its ``std``)."""
        per_seed = [statistics.fmean(accs) for accs in zip(*self.accs.values())]
        return statistics.pstdev(per_seed) if len(per_seed) > 1 else 0.0

    def metrics(self) -> dict[str, float]:
        """``acc/<arch>``, ``acc_std/<arch>``, ``acc/cross_arch_mean``, ``acc_std/cross_arch_mean`` and, for an
        ensemble, ``acc/ensemble`` and ``ece/ensemble`` (the MLflow metric names)."""
        out: dict[str, float] = {}
        for a in self.accs:
            out[f"acc/{a}"], out[f"acc_std/{a}"] = self.mean(a), self.std(a)
        out[CROSS_ARCH_MEAN], out[CROSS_ARCH_STD] = self.cross_arch_mean, self.cross_arch_std
        if self.ensemble_acc is not None:
            out["acc/ensemble"], out["ece/ensemble"] = self.ensemble_acc, self.ensemble_ece
        return out

    def rows(self, set_name: str) -> list[dict]:
        """Rows for results tables: set, arch, acc_mean, acc_std, n; the ensemble as arch ``ensemble``
        (n = number of members, with its ``ece``; ``report.results_table`` keeps it out of the mean)."""
        rows = [
            {"set": set_name, "arch": a, "acc_mean": self.mean(a), "acc_std": self.std(a), "n": len(v)}
            for a, v in self.accs.items()
        ]
        if self.ensemble_acc is not None:
            rows.append({"set": set_name, "arch": ENSEMBLE, "acc_mean": self.ensemble_acc, "acc_std": 0.0,
                         "n": sum(len(v) for v in self.accs.values()), "ece": self.ensemble_ece})
        return rows


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
    dsa_params = DSAParams(strategy=cfg.dsa_strategy, mode=cfg.dsa_mode) if cfg.dsa else None
    result = EvalResult()
    member_probs, hits = [], torch.zeros(data.num_classes, dtype=torch.float64)
    vmap_on = cfg.batched == "vmap" or (cfg.batched == "auto" and device.type == "cuda")
    archs = archs or cfg.archs
    builds = {a: (lambda a=a: create_net(a, data.channels, data.num_classes, data.im_size)) for a in archs}
    # progress in units of seconds: epochs x the measured cost of one epoch of each architecture (their costs
    # differ ~15x at 8x8), so the estimate of the time left holds from the first update (measured only for a bar)
    epoch_s = {a: (step_seconds(builds[a], x, y, cfg.batch, device) if shown(sys.stderr) else 1.0)
               * math.ceil(x.shape[0] / cfg.batch) for a in archs}
    n_models = len(archs) * cfg.num_eval
    progress = Progress(f"eval {n_models} models", sum(epoch_s[a] * cfg.epochs_for(a) * cfg.num_eval for a in archs),
                        counts=False)
    done = 0.0
    for ai, arch in enumerate(archs):
        seeds = [seed * 1_000_003 + ai * 1_009 + e for e in range(cfg.num_eval)]
        epochs = cfg.epochs_for(arch)

        def tick(e: int, arch=arch, epochs=epochs, first=ai * cfg.num_eval, base=done) -> None:
            k = min(first + 1 + (e - 1) // epochs, n_models)
            progress.update(base + e * epoch_s[arch], note=f"model {k}/{n_models}: {arch}, "
                            f"epoch {(e - 1) % epochs + 1}/{epochs}")

        nets, mode = train_seeds(
            builds[arch], seeds, x, y,
            epochs=epochs, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            batch=cfg.batch, lr_decay=cfg.lr_decay, dsa_params=dsa_params, device=device,
            batched=vmap_on, on_epoch=tick,
        )
        done += epoch_s[arch] * epochs * cfg.num_eval
        if not vmap_on:
            mode = f"loop (eval.batched={cfg.batched} on {device.type})"
        probs = _score_arch(result, arch, nets, mode, x_test, y_test, hits)
        if cfg.ensemble:
            member_probs += probs
    progress.close()
    _finish(result, member_probs, hits, y_test, data.num_classes, cfg)
    return result


def _score_arch(result: EvalResult, arch: str, nets, mode: str, x_test: Tensor, y_test: Tensor,
                hits: Tensor) -> list[Tensor]:
    """Test one architecture's trained seeds: accuracies into ``result``, per-class hits into ``hits``."""
    probs = [predict_proba(net, x_test) for net in nets]
    result.accs[arch] = [float((p.argmax(1) == y_test).float().mean()) for p in probs]
    result.modes[arch] = mode
    for p in probs:
        hits.index_add_(0, y_test.cpu(), (p.argmax(1) == y_test).double().cpu())
    log.info("eval %s, %d seeds trained by %s: acc %s", arch, len(nets), mode,
             " ".join(f"{a:.4f}" for a in result.accs[arch]))
    return probs


def _finish(result: EvalResult, member_probs: list[Tensor], hits: Tensor, y_test: Tensor, num_classes: int,
            cfg: EvalCfg) -> None:
    """Per-class recall over all models, and the averaged-softmax ensemble's accuracy and ECE."""
    n_models = sum(len(v) for v in result.accs.values())
    per_class = torch.bincount(y_test.cpu(), minlength=num_classes).double().clamp(min=1) * n_models
    result.class_acc = (hits / per_class).tolist()
    if cfg.ensemble:
        result.ensemble_acc, result.ensemble_ece = ensemble_scores(torch.stack(member_probs), y_test, cfg.ece_bins)
        log.info("eval ensemble of %d models: acc %.4f, ece %.4f", len(member_probs), result.ensemble_acc,
                 result.ensemble_ece)


def step_seconds(build, x: Tensor, y: Tensor, batch: int, device: torch.device, repeats: int = 1) -> float:
    """Seconds of one SGD training step (forward + backward) of a throw-away net on ``x[:batch]``.

    The net is built under a forked RNG (``seeded_net``), so the caller's random streams do not move; the
    fastest of ``repeats`` steps after one warm-up step is returned (a cost weight for progress estimates).
    """
    net = seeded_net(build, 0, device)
    net.train()
    xb, yb = x[:batch], y[:batch]
    best = math.inf
    for r in range(repeats + 1):
        t = time.perf_counter()
        torch.nn.functional.cross_entropy(net(xb), yb).backward()
        if r:
            best = min(best, time.perf_counter() - t)
    return best


def baseline_set(name: str, data: Dataset, ipc: int, seed: int, device: torch.device | str = "cpu"):
    """The training set of a baseline: ``random-real`` (ipc per class) or ``full`` (the train split)."""
    if name == "full":
        return data.train_x, data.train_y
    pool = RealPool(data.train_x, data.train_y, data.num_classes, torch.device(device))
    return pool.random_init(ipc, torch.Generator().manual_seed(seed))

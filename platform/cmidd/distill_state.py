"""What one distillation holds while it runs: its history, its per-iteration generator and its set-up.

``setup_run`` builds the initial images, their optimizer, the method and the CMI regularizer; the loop
(``cmidd.distill``) advances the ``RunState`` it returns, and the CMI weight's calibration (``cmidd.lam``)
measures gradient norms on one built with a unit weight. Both read the same set-up, so a calibration draw sees
exactly the images, net and batches the loop's first iterations see.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .checkpoint import CHECKPOINT
from .cmi import CMIRegularizer
from .data import Dataset, RealPool
from .device import resolve_device
from .errors import ConfigError
from .formation import check_factor, init_stored
from .hooks import Hooks
from .methods import Method, MethodContext, build_method
from .shard import Shard

if TYPE_CHECKING:
    from .config import CMICfg, DistillJob


@dataclass
class History:
    """Per-iteration curves and intermediate evaluations."""

    step: list[int] = field(default_factory=list)
    loss_dd: list[float] = field(default_factory=list)
    cmi: list[float] = field(default_factory=list)  # NaN where CMI was not computed
    loss_total: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)  # each with its "step"
    # CMI's pull along the run (cmi.measure_every / recalibrate_every): {"step", "g_dd", "g_cmi", "lam",
    # "alpha_realised"} measured at the images before iteration "step"'s update, "lam" the weight that update used
    calib: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def append(self, step: int, m: dict[str, float]) -> None:
        self.step.append(step)
        self.loss_dd.append(m["loss_dd"])
        self.cmi.append(m.get("cmi", math.nan))
        self.loss_total.append(m["loss_total"])


def iteration_generator(seed: int, it: int) -> torch.Generator:
    """The CPU generator of iteration ``it``: a pure function of (seed, it), which makes resume exact."""
    return torch.Generator().manual_seed((seed * 1_000_003 + it) % (2**63 - 1))


def build_cmi(cfg: CMICfg, proxies: list[nn.Module] | None, num_classes: int) -> CMIRegularizer | None:
    """The regularizer, or None when CMI is off (``lam == alpha == 0``; then no proxy forward ever runs)."""
    if not cfg.on:
        return None
    if not proxies:
        raise ConfigError("cmi.lam > 0 or cmi.alpha > 0 needs proxies, but none were given")
    return CMIRegularizer(proxies, num_classes, cfg.agg, cfg.k, cfg.space, cfg.temperature, cfg.subsample,
                          cfg.precision)


@dataclass
class RunState:
    """What one distillation holds while it runs (built by ``setup_run``, advanced by the loop)."""

    job: DistillJob
    data: Dataset
    device: torch.device
    syn: torch.Tensor  # the stored images (factor x factor tiles each with multi-formation), requires grad
    labels: torch.Tensor
    opt: torch.optim.Optimizer
    method: Method
    reg: CMIRegularizer | None
    lam: float  # the CMI weight the steps use (cmi.lam, or alpha's calibrated lambda; restored on resume)
    hooks: Hooks
    shard: Shard | None
    ckpt: Path | None
    history: History = field(default_factory=History)
    start: int = 0

    @property
    def classes(self) -> list[int] | None:
        """This worker's share of the DD term's classes (None = all)."""
        return self.shard.classes(self.data.num_classes) if self.shard is not None else None


def setup_run(job: DistillJob, data: Dataset, proxies: list[nn.Module] | None, hooks: Hooks, workdir: Path | None,
              shard: Shard | None, experts: list[torch.Tensor] | None, lam: float) -> RunState:
    """The initial images (real or noise), their optimizer, the method and the CMI regularizer."""
    device = resolve_device(job.device)
    cfg, c_num = job.method, data.num_classes
    pool = RealPool(data.train_x, data.train_y, c_num, device)
    init_gen = torch.Generator().manual_seed(job.seed)
    check_factor(cfg.factor, data.im_size)
    x0, labels = init_stored(pool, job.ipc, cfg.factor, init_gen)  # also validates ipc <= smallest class
    if cfg.init == "noise":
        x0 = torch.randn(x0.shape, generator=init_gen).to(device)
    syn = x0.detach().clone().contiguous().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum)
    method = build_method(MethodContext(cfg, job.net, pool, data.channels, c_num, data.im_size, device, experts))
    reg = build_cmi(job.cmi, proxies, c_num)
    if reg is not None and job.ipc * cfg.factor**2 == 1:
        warnings.warn("ipc=1: each class's single image is its own centroid, so CMI is 0 and cmi.lam (alpha) has no "
                      "effect", stacklevel=2)
        reg = None
    ckpt = workdir / CHECKPOINT if workdir is not None else None
    return RunState(job, data, device, syn, labels, opt, method, reg, lam, hooks, shard, ckpt)

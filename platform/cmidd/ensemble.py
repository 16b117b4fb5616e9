"""Ensembles of trained classifiers: seeds trained together with ``torch.func``, averaged-softmax scores.

``train_seeds`` trains S nets of one architecture, one per seed, on the same set. Where the net allows it,
the S copies are trained *together*: their parameters are stacked (``torch.func.stack_module_state``) and
one ``vmap``-ed gradient call serves all S per step, followed by an SGD step on the stacked tensors. Every
seed keeps its own initialization, data order and DSA draws (from its own generator, in the same order as
``training.train_classifier``), and the SGD update is torch's (momentum, weight decay, the lr decayed once
at half the epochs), so S batched seeds equal S sequential runs up to float rounding.

Nets whose norm layers keep running statistics in training mode (BatchNorm) cannot be batched this way
(the in-place buffer updates do not vmap): they fall back to the sequential loop, and ``train_seeds`` says
so in its returned mode and in the log.

``expected_calibration_error`` and ``ensemble_scores`` score the averaged-softmax ensemble of M models.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import DSAParams
from .training import augment_batch, lr_at, seeded_net, train_classifier

log = logging.getLogger(__name__)

BATCHED, LOOP = "vmap", "loop"


def unbatchable_reason(net: nn.Module) -> str | None:
    """Why ``net`` cannot be trained with stacked parameters under ``vmap`` (None: it can).

    BatchNorm in training mode updates its running statistics in place, which ``vmap`` over stacked buffers
    does not support; GroupNorm / instance / layer norm carry no such state and batch fine.
    """
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            return f"{type(m).__name__} with running stats ({name})"
    return None


def train_seeds(
    build: Callable[[], nn.Module],
    seeds: list[int],
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch: int,
    lr_decay: float = 1.0,
    dsa_params: DSAParams | None = None,
    device: torch.device | str = "cpu",
    batched: bool = True,
    on_epoch: Callable[[int], None] | None = None,
) -> tuple[list[nn.Module], str]:
    """Train one net per seed on (x, y), batched with ``vmap`` where possible.

    Seed ``s`` gives the net's initialization (``seeded_net(build, s)``) and its CPU generator for data order
    and DSA (``torch.Generator().manual_seed(s)``), exactly as one ``train_classifier`` call would use them.

    Args:
        build: builds a fresh net (called once per seed under a forked, seeded RNG).
        seeds: one seed per net.
        x: (N, C, H, W) images on ``device``; y: (N,) labels.
        epochs, lr, momentum, weight_decay, batch, lr_decay, dsa_params: as ``train_classifier``.
        batched: False forces the sequential loop.
        on_epoch: called with the number of epochs done so far, summed over the seeds, after each epoch.

    Returns:
        (nets, mode): the trained nets in eval mode, in the order of ``seeds``; mode is ``"vmap"`` or
        ``"loop (<reason>)"``.
    """
    device = torch.device(device)
    nets = [seeded_net(build, s, device) for s in seeds]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    reason = unbatchable_reason(nets[0]) if batched else "batched=False"
    if reason is None and len(nets) == 1:
        reason = "one seed"
    hp = dict(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, batch=batch, lr_decay=lr_decay,
              dsa_params=dsa_params)
    if reason is not None:
        for i, (net, gen) in enumerate(zip(nets, gens)):
            tick = None if on_epoch is None else (lambda e, i=i: on_epoch(i * epochs + e))
            train_classifier(net, x, y, gen=gen, on_epoch=tick, **hp)
        mode = f"{LOOP} ({reason})"
    else:
        _train_stacked(nets, gens, x, y, on_epoch=on_epoch, **hp)
        mode = BATCHED
    for net in nets:
        net.eval()
    return nets, mode


def _train_stacked(nets: list[nn.Module], gens: list[torch.Generator], x: Tensor, y: Tensor, *, epochs: int,
                   lr: float, momentum: float, weight_decay: float, batch: int, lr_decay: float,
                   dsa_params: DSAParams | None, on_epoch: Callable[[int], None] | None = None) -> None:
    """SGD on stacked parameters (one ``vmap``-ed gradient per step), written back into ``nets``."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    for net in nets:
        net.train()
    params, buffers = stack_module_state(nets)
    params = {k: v.detach().clone() for k, v in params.items()}
    base = copy.deepcopy(nets[0]).to("meta")

    def loss_of(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    grads_of = vmap(grad(loss_of))
    bufs: dict[str, Tensor] = {}  # momentum buffers, created at the first step as torch.optim.SGD does
    n = x.shape[0]
    for epoch in range(1, epochs + 1):
        step_lr = lr_at(epoch, epochs, lr, lr_decay)
        perms = [torch.randperm(n, generator=g).to(x.device) for g in gens]
        for start in range(0, n, batch):
            xs, ys = [], []
            for perm, gen in zip(perms, gens):
                idx = perm[start : start + batch]
                xs.append(augment_batch(x[idx], gen, dsa_params))
                ys.append(y[idx])
            grads = grads_of(params, buffers, torch.stack(xs), torch.stack(ys))
            with torch.no_grad():
                for k, p in params.items():
                    d = grads[k].add(p, alpha=weight_decay) if weight_decay != 0 else grads[k]
                    if momentum != 0:
                        if k in bufs:
                            d = bufs[k].mul_(momentum).add_(d)
                        else:
                            d = bufs[k] = d.clone()
                    p.add_(d, alpha=-step_lr)
        if on_epoch is not None:
            on_epoch(epoch * len(nets))
    with torch.no_grad():
        for i, net in enumerate(nets):
            for k, p in net.named_parameters():
                p.copy_(params[k][i])


@torch.no_grad()
def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE of class probabilities: confidence = max probability, ``bins`` equal-width bins on [0, 1].

    Bin b holds the confidences in (b/B, (b+1)/B] (a confidence of exactly 0 goes to the first bin);
    ECE = sum_b |bin b| / N * |accuracy in b - mean confidence in b|.

    Args:
        probs: (N, C) probabilities; labels: (N,).
    """
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).to(probs.dtype)
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    count = torch.zeros(bins, dtype=probs.dtype, device=probs.device).index_add_(0, idx, torch.ones_like(conf))
    sum_conf = torch.zeros_like(count).index_add_(0, idx, conf)
    sum_acc = torch.zeros_like(count).index_add_(0, idx, correct)
    return float((sum_acc - sum_conf).abs().sum() / probs.shape[0])


@torch.no_grad()
def ensemble_scores(member_probs: Tensor, labels: Tensor, bins: int = 15) -> tuple[float, float]:
    """Accuracy and ECE of the averaged-softmax ensemble.

    Args:
        member_probs: (M, N, C) softmax outputs of M models on N test points; labels: (N,).

    Returns:
        (accuracy in [0, 1], ECE) of ``member_probs.mean(0)``.
    """
    probs = member_probs.mean(dim=0)
    acc = float((probs.argmax(dim=1) == labels).float().mean())
    return acc, expected_calibration_error(probs, labels, bins)


# ----------------------------------------------------------------------------------------------------
# Ensembles of distilled sets

SET_MODES = ("concat", "per-class-best")


def check_combinable(sets: list, mode: str) -> None:
    """The sources can be combined in ``mode``: a known mode, one data set, image shape and class count, and for
    per-class-best one IPC. (The ``ensemble`` job checks this before anything is written.)

    Raises:
        ConfigError: an unknown mode.
        DataError: sources that do not match.
    """
    from .errors import ConfigError, DataError

    if mode not in SET_MODES:
        raise ConfigError(f"--mode: must be one of {', '.join(SET_MODES)} (got {mode!r})")
    if not sets:
        raise DataError("ensemble: no source sets")
    keys = ("dataset", "num_classes", "channels", "im_size")
    first = {k: sets[0].meta.get(k) for k in keys}
    for i, s in enumerate(sets[1:], start=1):
        got = {k: s.meta.get(k) for k in keys}
        if got != first:
            raise DataError(f"ensemble: source {i} is {got}, but source 0 is {first}: sets must match")
    ipcs = sorted({s.ipc for s in sets})
    if mode == "per-class-best" and len(ipcs) != 1:
        raise DataError(f"ensemble: per-class-best needs sources of one IPC, got IPCs {ipcs}")


def combine_sets(sets: list, mode: str, class_scores: Tensor | None = None, sources: list[str] | None = None):
    """One synthetic set built from several of the same data set (class-ordered, as ``SyntheticSet``).

    Modes:
        ``concat``: class c gets the class-c images of every source, in source order; IPC = sum of the IPCs.
        ``per-class-best``: class c takes all its images from the source with the highest ``class_scores[:, c]``
            (ties: the earlier source, i.e. the better-ranked one); every source must have the same IPC,
            which is kept.

    Args:
        sets: ``SyntheticSet``s, best-ranked first.
        class_scores: (len(sets), num_classes) per-class scores (``EvalResult.class_acc``), for per-class-best.
        sources: labels of the sources for the set's metadata (``ensemble_of``).

    Returns:
        A new ``SyntheticSet``; its meta has ``method = "ensemble-<mode>"``, ``ensemble_of`` and, for
        per-class-best, ``class_source`` (the source index chosen per class).
    """
    from .errors import DataError
    from .synthetic import SyntheticSet

    check_combinable(sets, mode)
    c_num = sets[0].num_classes
    by_class = [s.images.view(c_num, s.ipc, *s.images.shape[1:]) for s in sets]
    meta = {k: v for k, v in sets[0].meta.items() if k not in ("ipc", "config", "content_sha256")}
    meta.update(method=f"ensemble-{mode}", ensemble_of=list(sources or range(len(sets))))
    if mode == "concat":
        images = torch.cat(by_class, dim=1)
    else:
        if class_scores is None or tuple(class_scores.shape) != (len(sets), c_num):
            got = None if class_scores is None else tuple(class_scores.shape)
            raise DataError(f"ensemble: per-class-best needs class_scores of shape {(len(sets), c_num)}, got {got}")
        # argmax returns the first maximal index: ties go to the better-ranked source
        choice = [int(torch.argmax(class_scores[:, c])) for c in range(c_num)]
        images = torch.stack([by_class[j][c] for c, j in enumerate(choice)])
        meta["class_source"] = choice
    ipc = images.shape[1]
    meta["ipc"] = ipc
    labels = torch.arange(c_num).repeat_interleave(ipc)
    return SyntheticSet(images.reshape(c_num * ipc, *images.shape[2:]).clone(), labels, meta)


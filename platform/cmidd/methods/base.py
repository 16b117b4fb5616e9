"""The one interface every DD method implements, and the context it is built from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from ..data import RealPool
from ..training import draw_seed  # noqa: F401  (the methods draw their seeds with it)

if TYPE_CHECKING:
    from ..config import MethodBase, NetCfg


@dataclass(frozen=True)
class MethodContext:
    """What a method needs to build itself: its config, the DD net, the real data and the device."""

    cfg: MethodBase  # the method's own model (cmidd.config.methods)
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
    ``loss`` -> image update (per class when ``class_by_class``) -> ``after_update``; checkpoints call ``state_dict``, ``--resume``
    ``load_state_dict``. All randomness comes from ``gen``.
    """

    steps_per_iteration: int
    # True: each of those steps is one image update per class on that class's loss (IDC's reference), in
    # class order, then one ``after_update``; False: one image update for all classes at once
    class_by_class: bool = False

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

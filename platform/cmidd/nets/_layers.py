"""Shared building blocks: option checking, norm/activation/pool factories and size bookkeeping."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def _pool_sums(x: Tensor) -> Tensor:
    """2x2/stride-2 means of an even-sized map in the CPU kernel's order: ((a00 + a01) + a10) + a11, then / 4."""
    pairs = x[..., 0::2] + x[..., 1::2]  # a00 + a01 (and a10 + a11 on odd rows, unused)
    return (pairs[..., 0::2, :] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 4


class _AvgPool2x2Fn(torch.autograd.Function):
    """Forward: the sums as strided slices; backward: the kernel's one (each input pixel gets grad / 4).

    Autograd through the slices would zero-fill a full-size gradient per slice (18% of a ConvNet's
    forward + backward); the backward here is differentiable (double backward works) and vmap-able.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:  # type: ignore[override]
        return _pool_sums(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        """Nothing to save: the backward needs only the gradient's shape (required for generate_vmap_rule)."""

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        *lead, h, w = grad.shape
        g = (grad / 4)[..., :, None, :, None].expand(*lead, h, 2, w, 2).reshape(*lead, 2 * h, 2 * w)
        return g.contiguous()


class AvgPool2x2(nn.Module):
    """``nn.AvgPool2d(2, 2)``, bit for bit (forward and backward), faster on CPU for NCHW float maps.

    PyTorch's NCHW CPU kernel took 7.7 ms for a (32, 128, 32, 32) map on this project's machine, 24% of a
    ConvNet-3 forward (torch.profiler); the same sums as strided slices took about a sixth of that time in
    the forward. Odd sizes, other devices, dtypes and layouts use the kernel.
    """

    def forward(self, x: Tensor) -> Tensor:
        fast = (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 4
                and x.is_contiguous() and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0 and min(x.shape[-2:]) >= 2)
        return _AvgPool2x2Fn.apply(x) if fast else F.avg_pool2d(x, 2, 2)


# Instance norm is GroupNorm(C, C) so it carries affine parameters, as in the DD literature;
# "group" is GroupNorm(4, C). Activations are not in-place so autograd tricks (torch.func, hooks) stay safe.
_GROUPS = 4
_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "instance": lambda c: nn.GroupNorm(c, c, affine=True),
    "batch": nn.BatchNorm2d,
    "layer": lambda c: nn.GroupNorm(1, c, affine=True),
    "group": lambda c: nn.GroupNorm(_GROUPS, c, affine=True),
    "none": lambda c: nn.Identity(),
}
_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "leakyrelu": lambda: nn.LeakyReLU(0.01),
    "swish": nn.SiLU,
}
_POOLS: dict[str, Callable[[], nn.Module]] = {
    "avg": AvgPool2x2,
    "max": lambda: nn.MaxPool2d(2, 2),
    "none": nn.Identity,
}
NORMS = tuple(_NORMS)
ACTS = tuple(_ACTS)
POOLS = tuple(_POOLS)


def check_choice(net: str, option: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``.

    Raises:
        ConfigError: naming the net, the option, the allowed values and the value given.
    """
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{net}: option {option!r} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_positive_int(net: str, option: str, value: Any) -> int:
    """Return ``value`` if it is an ``int`` >= 1 (``bool`` excluded), else raise ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{net}: option {option!r} must be a positive integer; got {value!r}")
    return value


def check_geometry(net: str, channels: Any, num_classes: Any, im_size: Any) -> None:
    """Validate the three arguments every factory receives."""
    check_positive_int(net, "channels", channels)
    check_positive_int(net, "num_classes", num_classes)
    check_positive_int(net, "im_size", im_size)


def reject_unknown(net: str, kw: dict[str, Any], allowed: Iterable[str] = ()) -> None:
    """Raise ``ConfigError`` for keyword overrides a net does not understand (typos in configs)."""
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(f"{net}: unknown option(s) {', '.join(unknown)}; allowed: {known}")


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalization layer over (B, channels, H, W) maps; ``kind`` must already be checked."""
    return _NORMS[kind](channels)


def check_norm_width(net: str, norm: str, channels: int) -> None:
    """``GroupNorm(4, C)`` needs ``C`` divisible by 4; say so at build time, not at first forward."""
    if norm == "group" and channels % _GROUPS:
        raise ConfigError(f"{net}: norm 'group' needs a width divisible by {_GROUPS}; got {channels}")


def min_size_for(norm: str) -> int:
    """Smallest spatial size a map may have when ``norm`` is applied to it.

    Instance norm normalizes each channel of each sample over H*W values: on a 1x1 map the output is the
    constant bias, so the net would ignore its input. Down-sampling therefore stops at 2x2 in front of
    an instance-normed layer; the other norms pool statistics over channels or the batch and accept 1x1.
    """
    return 2 if norm == "instance" else 1


def make_act(kind: str) -> nn.Module:
    """Activation module; ``kind`` must already be checked."""
    return _ACTS[kind]()


def make_pool(kind: str) -> nn.Module:
    """2x2, stride-2 pooling module (identity for ``"none"``); ``kind`` must already be checked."""
    return _POOLS[kind]()


def can_halve(size: int, next_min: int) -> bool:
    """Whether a 2x2/stride-2 pool on a ``size`` map leaves at least ``next_min`` pixels per side."""
    return size // 2 >= next_min

"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021).

DSA augments real and synthetic images with the *same* random transform so that matching (gradients,
features, ...) compares like with like, and keeps every op differentiable w.r.t. the images so the loss
reaches the synthetic pixels through the augmentation.

Here "the same transform" is carried by an integer ``seed``: every op seeds its own CPU ``torch.Generator``
from (``seed``, position of the op in the strategy) and draws all its per-sample parameters at once as an
(N, k) tensor. Consequences a caller can rely on:

* same seed, same strategy, same N -> identical transforms (bit-identical output for identical input);
* same seed, different N (DM: 256 real vs IPC synthetic images) -> sample i gets the same parameters in
  both calls for every i < min(N_real, N_syn), in every op, because torch's CPU generator fills tensors
  in order (checked by the tests) and one op's draw never shifts another's;
* ``shared=True`` draws one parameter set and applies it to all samples; it equals sample 0's per-sample
  parameters, so shared and per-sample calls with one seed agree on the first image;
* parameters are drawn in float32 on the CPU whatever ``x``'s device and dtype, so the transform depends
  only on the seed, not on where the images live;
* ``mode="single"`` (the reference's aug_mode 'S', the default) applies ONE group of the strategy per call
  ("color" is one group of three ops, every other name a group of one), chosen by the seed; an op keeps
  the stream of its position in the full strategy, so single = multi restricted to the chosen group;
  ``mode="multi"`` applies every op in order;
* ``dsa_classes`` is the siamese per-class form used in matching (the reference's batchmode): class c's
  rows all get one parameter set and one group drawn from ``seeds[c]``, so a real and a synthetic batch
  augmented with the same seeds see the same transform per class. It is one vectorized call for all classes.

The module uses no global RNG.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .device import to_device
from .errors import ConfigError, UnknownNameError

# Probability of a horizontal flip, fixed at 0.5 as in DSA.
FLIP_PROB = 0.5
_MASK64 = (1 << 64) - 1
DSA_MODES = ("single", "multi")


@dataclass(frozen=True)
class DSAParams:
    """Augmentation strategy and strengths; the defaults are those of the DSA paper.

    Attributes:
        strategy: ops joined by "_", applied in order; "color" = brightness, saturation, contrast;
            "" or "none" = no augmentation. Validated on construction.
        ratio_scale: per-axis scale factor drawn uniformly in [1 / ratio_scale, ratio_scale] (>= 1).
        ratio_rotate: rotation angle drawn uniformly in [-ratio_rotate, ratio_rotate] degrees.
        ratio_crop_pad: maximal translation as a fraction of the image side ("crop" = pad and crop back).
        ratio_cutout: side of the zeroed square as a fraction of the image side, in [0, 1].
        brightness: additive shift drawn uniformly in [-brightness / 2, brightness / 2].
        saturation: factor on the deviation from the per-pixel channel mean, drawn in [0, saturation].
        contrast: factor on the deviation from the per-image mean, drawn in [contrast, contrast + 1].
        mode: "single" = one group of the strategy per call, chosen by the seed (reference DSA);
            "multi" = every op of the strategy in order.
    """

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    mode: str = "single"

    def __post_init__(self) -> None:
        parse_strategy(self.strategy)
        if self.mode not in DSA_MODES:
            raise ConfigError(f"DSAParams.mode must be one of {', '.join(DSA_MODES)}; got {self.mode!r}")
        if not self.ratio_scale >= 1.0:
            raise ConfigError(f"DSAParams.ratio_scale must be >= 1; got {self.ratio_scale!r}")
        if not 0.0 <= self.ratio_cutout <= 1.0:
            raise ConfigError(f"DSAParams.ratio_cutout must be in [0, 1]; got {self.ratio_cutout!r}")
        for name in ("ratio_rotate", "ratio_crop_pad", "brightness", "saturation", "contrast"):
            value = getattr(self, name)
            # `not >=` also rejects NaN.
            if not value >= 0.0:
                raise ConfigError(f"DSAParams.{name} must be >= 0; got {value!r}")



class _Draw:
    """Uniform [0, 1) parameters for one op, as an (N, k) float32 CPU tensor.

    ``index`` None: one row per sample from ``seeds[0]``. Otherwise one row per seed (parameter set), and
    sample i gets row ``index[i]`` (shared = one seed and an all-zero index; per class = labels).
    """

    def __init__(self, seeds: list[int], n: int, index: Tensor | None = None) -> None:
        self._gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        self._n = n
        self._index = index

    def rand(self, k: int) -> Tensor:
        """One generator call per op and seed keeps the per-sample prefix property."""
        if self._index is None:
            return torch.rand(self._n, k, generator=self._gens[0])
        rows = torch.cat([torch.rand(1, k, generator=g) for g in self._gens])
        return rows[self._index]


def _uniform_int(u: Tensor, low: int, high: int) -> Tensor:
    """Map uniform [0, 1) values to uniform integers in [low, high] (int64, same shape)."""
    # The clamp guards against u * (high - low + 1) rounding up to the excluded bound.
    return (u.double() * (high - low + 1)).floor().long().clamp_(max=high - low) + low


def _brightness(x: Tensor, draw: _Draw, p: DSAParams) -> Tensor:
    shift = (draw.rand(1) - 0.5) * p.brightness
    return x + to_device(shift, x.device, x.dtype).view(-1, 1, 1, 1)


def _saturation(x: Tensor, draw: _Draw, p: DSAParams) -> Tensor:
    factor = to_device(draw.rand(1) * p.saturation, x.device, x.dtype).view(-1, 1, 1, 1)
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * factor + mean


def _contrast(x: Tensor, draw: _Draw, p: DSAParams) -> Tensor:
    factor = to_device(draw.rand(1) + p.contrast, x.device, x.dtype).view(-1, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


def _crop(x: Tensor, draw: _Draw, p: DSAParams) -> Tensor:
    """Integer translation with zero fill (= zero-pad, then crop back at a random offset)."""
    n, _, h, w = x.shape
    sh, sw = int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)
    u = draw.rand(2)
    ty = to_device(_uniform_int(u[:, 0], -sh, sh), x.device)
    tx = to_device(_uniform_int(u[:, 1], -sw, sw), x.device)
    padded = F.pad(x, (sw, sw, sh, sh))
    # Output pixel (i, j) reads padded pixel (i + sh - ty, j + sw - tx); indexing keeps the gradient.
    rows = torch.arange(h, device=x.device)[None, :] + sh - ty[:, None]
    cols = torch.arange(w, device=x.device)[None, :] + sw - tx[:, None]
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def _cutout(x: Tensor, draw: _Draw, p: DSAParams) -> Tensor:
    """Zero a square of side ``ratio_cutout * side`` centred anywhere in the image (clipped at borders)."""
    _, _, h, w = x.shape
    ch, cw = int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5)
    u = draw.rand(2)
    top = to_device(_uniform_int(u[:, 0], 0, h - 1) - ch // 2, x.device)[:, None]
    left = to_device(_uniform_int(u[:, 1], 0, w - 1) - cw // 2, x.device)[:, None]
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top) & (rows < top + ch)
    in_cols = (cols >= left) & (cols < left + cw)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    # A multiplicative mask: zero gradient inside the hole, identity outside.
    return x * keep[:, None].to(x.dtype)


def _flip(x: Tensor, draw: _Draw, p: DSAParams) -> Tensor:
    flip = to_device(draw.rand(1) < FLIP_PROB, x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    """Resample (N, C, H, W) ``x`` through (N, 2, 3) affine maps, bilinear with zero padding."""
    theta = to_device(theta, x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _scale(x: Tensor, draw: _Draw, p: DSAParams) -> Tensor:
    lo = 1.0 / p.ratio_scale
    s = draw.rand(2).double() * (p.ratio_scale - lo) + lo
    theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 1, 1] = s[:, 0], s[:, 1]
    return _warp(x, theta)


def _rotate(x: Tensor, draw: _Draw, p: DSAParams) -> Tensor:
    angle = (draw.rand(1)[:, 0].double() - 0.5) * 2.0 * math.radians(p.ratio_rotate)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, sin, -sin, cos
    return _warp(x, theta)


# name -> op(x, draw, params); every op maps (N, C, H, W) to (N, C, H, W) and is differentiable in x.
_OPS: dict[str, Callable[[Tensor, _Draw, DSAParams], Tensor]] = {
    "brightness": _brightness,
    "saturation": _saturation,
    "contrast": _contrast,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}
# Names that stand for several ops, in order.
_GROUPS: dict[str, tuple[str, ...]] = {"color": ("brightness", "saturation", "contrast")}
_NONE = ("", "none")


def op_names() -> list[str]:
    """Every name a strategy may contain: groups first, then primitive ops."""
    return [*_GROUPS, *_OPS]


def parse_strategy(s: str) -> list[str]:
    """Split a DSA strategy string into the primitive ops it applies, in order.

    Args:
        s: names joined by "_" (e.g. ``"color_crop_cutout"``); ``""`` or ``"none"`` mean no augmentation.

    Returns:
        Primitive op names with groups expanded, e.g. ``["brightness", "saturation", "contrast", "crop"]``.

    Raises:
        ConfigError: ``s`` is not a string or names an unknown op (an ``UnknownNameError`` naming the op,
            the closest name and the choices).
    """
    if not isinstance(s, str):
        raise ConfigError(f"DSA strategy must be a string; got {s!r}")
    if s in _NONE:
        return []
    ops: list[str] = []
    for name in s.split("_"):
        if name in _GROUPS:
            ops += _GROUPS[name]
        elif name in _OPS:
            ops.append(name)
        else:
            close = difflib.get_close_matches(name, op_names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(
                f"unknown DSA op {name!r} in strategy {s!r}{hint}; choices: {', '.join(op_names())}"
            )
    return ops


def parse_groups(s: str) -> list[tuple[int, tuple[str, ...]]]:
    """The groups of a strategy as (position of the group's first op in ``parse_strategy(s)``, its ops).

    ``"color_crop"`` -> ``[(0, ("brightness", "saturation", "contrast")), (3, ("crop",))]``.
    """
    groups, start = [], 0
    if s in _NONE:
        return groups
    parse_strategy(s)  # validates
    for name in s.split("_"):
        ops = _GROUPS.get(name, (name,))
        groups.append((start, ops))
        start += len(ops)
    return groups


def _op_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for the op at ``index`` (splitmix64), so ops draw independent streams."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def chosen_group(seed: int, params: "DSAParams") -> int:
    """Index into ``parse_groups(params.strategy)`` of the group a single-mode call with ``seed`` applies."""
    # index -1 is a stream no op uses (ops use 0, 1, ...)
    return _op_seed(seed, -1) % len(parse_groups(params.strategy))


# Built here, after parse_strategy exists, because construction validates the strategy.
DEFAULT_PARAMS = DSAParams()


def _check(x: Tensor, seed: int) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"dsa expects a 4-D floating tensor (N, C, H, W); got {x.dtype} {tuple(x.shape)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"dsa seed must be an int; got {seed!r}")


def _ops_of(groups: list[tuple[int, tuple[str, ...]]]) -> list[tuple[int, str]]:
    return [(start + i, name) for start, names in groups for i, name in enumerate(names)]


def dsa(x: Tensor, seed: int, params: DSAParams = DEFAULT_PARAMS, shared: bool = False) -> Tensor:
    """Apply the DSA strategy of ``params`` to a batch with transforms determined by ``seed``.

    Args:
        x: (N, C, H, W) floating images on any device.
        seed: any Python int; equal seeds give equal transforms (see the module docstring for N mismatch).
        params: strategy, strengths and mode (single: the seed picks one group; multi: every op).
        shared: draw one parameter set for the whole batch instead of one per sample.

    Returns:
        (N, C, H, W) augmented images, same dtype and device as ``x``, differentiable w.r.t. ``x``.
        With an empty strategy ``x`` itself is returned.

    Raises:
        ValueError: ``x`` is not a 4-D floating tensor.
        TypeError: ``seed`` is not an int.
    """
    _check(x, seed)
    groups = parse_groups(params.strategy)
    if not groups:
        return x
    if params.mode == "single":
        groups = [groups[chosen_group(seed, params)]]
    index = torch.zeros(x.shape[0], dtype=torch.long) if shared else None
    return _run(x, _ops_of(groups), [seed], index, params)


def _run(x: Tensor, ops: list[tuple[int, str]], seeds: list[int], index: Tensor | None, p: DSAParams) -> Tensor:
    for position, name in ops:
        x = _OPS[name](x, _Draw([_op_seed(s, position) for s in seeds], x.shape[0], index), p)
    return x


def dsa_classes(x: Tensor, labels: Tensor, seeds: list[int], params: DSAParams = DEFAULT_PARAMS) -> Tensor:
    """Siamese per-class DSA: the rows of class c share one transform drawn from ``seeds[c]``.

    Equals ``dsa(x[labels == c], seeds[c], params, shared=True)`` for every class c (checked by the tests),
    in one vectorized pass per group: augmenting a real and a synthetic batch with the same ``seeds`` gives
    both the same transform per class, whatever their sizes.

    Args:
        x: (N, C, H, W) floating images.
        labels: (N,) integer class of each row, in [0, len(seeds)).
        seeds: one int seed per class.
        params: strategy, strengths and mode.

    Returns:
        (N, C, H, W) augmented images in the order of ``x``, differentiable w.r.t. ``x``.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"dsa expects a 4-D floating tensor (N, C, H, W); got {x.dtype} {tuple(x.shape)}")
    if labels.shape != (x.shape[0],):
        raise ValueError(f"dsa_classes labels must have shape ({x.shape[0]},); got {tuple(labels.shape)}")
    for s in seeds:
        _check(x, s)
    groups = parse_groups(params.strategy)
    if not groups or x.shape[0] == 0:
        return x
    index = labels.detach().to("cpu", torch.long)
    if params.mode == "multi":
        return _run(x, _ops_of(groups), list(seeds), index, params)
    chosen = torch.tensor([chosen_group(s, params) for s in seeds], dtype=torch.long)[index]
    parts, order = [], []
    for g in chosen.unique().tolist():
        rows = (chosen == g).nonzero()[:, 0]
        # the draw rows stay indexed by class, so each part's rows pick their class's parameter set
        parts.append(_run(x[to_device(rows, x.device)], _ops_of([groups[g]]), list(seeds), index[rows], params))
        order.append(rows)
    if len(parts) == 1:
        return parts[0]
    inverse = torch.empty_like(index)
    inverse[torch.cat(order)] = torch.arange(index.shape[0])
    return torch.cat(parts)[to_device(inverse, x.device)]

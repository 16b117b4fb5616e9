"""Multi-formation (IDC, Kim et al. 2022): each stored synthetic image holds ``factor x factor`` smaller images.

A stored image of size H x W is cut into ``factor**2`` tiles of (H/factor) x (W/factor), row by row; each
tile, resized back to H x W (bilinear), is one training image. So a set stored at IPC k trains networks
with ``k * factor**2`` images per class at the same storage cost. ``factor == 1`` is the identity.

The distillation loop decodes before the DD loss and the CMI term (the CMI paper computes IDC's CMI on the
decoded images), and evaluation decodes the same way (``SyntheticSet.training_set``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError


def check_factor(factor: int, im_size: int) -> None:
    if factor < 1 or im_size % factor:
        raise ConfigError(f"method.factor must divide the image size {im_size} (got {factor})")


def decode(images: Tensor, labels: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """Decode stored images into ``factor**2`` training images each; differentiable in ``images``.

    Args:
        images: (N, C, H, W) stored images, class-ordered.
        labels: (N,) labels.
        factor: tiles per side; must divide H and W.

    Returns:
        (N * factor**2, C, H, W) images (the tiles of image 0 first, row by row, then of image 1, ...) and
        their labels; class order is kept.
    """
    if factor == 1:
        return images, labels
    n, c, h, w = images.shape
    if h % factor or w % factor:
        raise ConfigError(f"method.factor must divide the image size {h}x{w} (got {factor})")
    th, tw = h // factor, w // factor
    tiles = images.reshape(n, c, factor, th, factor, tw).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, th, tw)
    return F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False), labels.repeat_interleave(
        factor * factor
    )


def encode(images: Tensor, factor: int) -> Tensor:
    """The inverse layout: every ``factor**2`` consecutive images, each shrunk to a tile, form one stored image.

    Used to initialize a multi-formation set from real images (IDC's ``mix`` initialization).

    Args:
        images: (N * factor**2, C, H, W).

    Returns:
        (N, C, H, W).
    """
    if factor == 1:
        return images
    m, c, h, w = images.shape
    th, tw = h // factor, w // factor
    small = F.interpolate(images, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
    n = m // (factor * factor)
    return small.reshape(n, factor, factor, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def init_stored(pool, ipc: int, factor: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``ipc`` stored images per class made of ``ipc * factor**2`` random real images of that class."""
    x, y = pool.random_init(ipc * factor * factor, gen)
    return encode(x, factor), y[:: factor * factor]

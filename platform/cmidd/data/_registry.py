"""The ``Dataset`` record, the ``DATASETS`` registry, ``load_dataset`` and the image helpers loaders share."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError
from ..registry import Registry

# Loaders convert and resize in chunks so a 50k-image set never needs a second full-size float copy.
_CHUNK = 4096


# eq=False: the generated __eq__ would compare tensors, whose truth value is ambiguous.
@dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory, normalized image classification data set.

    Attributes:
        name: registry name of the loader that built it (``"digits"``, ``"cifar10"``, ...).
        train_x: (N, C, H, W) float32, already normalized with ``mean``/``std``.
        train_y: (N,) int64 labels in ``[0, num_classes)``.
        test_x: (M, C, H, W) float32, normalized with the same ``mean``/``std``.
        test_y: (M,) int64.
        num_classes: number of classes.
        channels: C.
        im_size: H == W.
        mean: per-channel mean that was subtracted, length C.
        std: per-channel std that was divided by, length C.
        class_names: one name per class, in label order.
        content_digest: sha256 (hex) of the data's raw content, as the loader read it (``ContentHash``: the
            pixels before resizing and normalization, the labels, the class names, split by split), so that it
            names the data and its split, not the float rounding of a machine; "" from a loader that gives
            none (``digest`` then hashes the loaded tensors).
        split_seed: the seed that drew the train/test split, None when the loader's split ignores it (files
            that define the split).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    channels: int
    im_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    content_digest: str = ""
    split_seed: int | None = None

    @cached_property
    def digest(self) -> str:
        """The data's content digest (``content_digest``, else the sha256 of the loaded tensors and class names,
        computed once per ``Dataset``): the protocol id names the data by it (``cmidd.protocol``)."""
        if self.content_digest:
            return self.content_digest
        h = ContentHash()
        for name, t in (("train_x", self.train_x), ("train_y", self.train_y), ("test_x", self.test_x),
                        ("test_y", self.test_y)):
            h.add(name, t)
        return h.names(self.class_names).hexdigest()

    def __post_init__(self) -> None:
        # Cheap consistency checks so a faulty (possibly third-party) loader fails here, not deep in training.
        shape = (self.channels, self.im_size, self.im_size)
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.ndim != 4 or tuple(x.shape[1:]) != shape:
                raise DataError(
                    f"dataset {self.name}: {split}_x has shape {tuple(x.shape)}, expected (N, *{shape})"
                )
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise DataError(
                    f"dataset {self.name}: {split}_y has shape {tuple(y.shape)}, expected ({x.shape[0]},)"
                )
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"dataset {self.name}: mean/std need {self.channels} values each")
        if len(self.class_names) != self.num_classes:
            raise DataError(
                f"dataset {self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )

    def denormalize(self, x: Tensor) -> Tensor:
        """Undo the normalization.

        Args:
            x: (..., C, H, W) normalized images, e.g. (N, C, H, W) or (C, H, W).

        Returns:
            Same shape as ``x``: ``x * std + mean`` per channel, roughly in [0, 1].
        """
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x * std + mean

    def class_counts(self) -> Tensor:
        """Number of training images per class: (num_classes,) int64."""
        return torch.bincount(self.train_y, minlength=self.num_classes)


class ContentHash:
    """sha256 over named arrays (name, dtype, shape, then the bytes, without a copy) and names: a loader feeds it
    what it read, in a fixed order, and stores ``hexdigest()`` as ``Dataset.content_digest``.

    Example:
        >>> ContentHash().add("train_x", raw).add("train_y", labels).names(["0", "1"]).hexdigest()
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, name: str, array: Any) -> ContentHash:
        a = np.ascontiguousarray(array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array))
        self._h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        self._h.update(memoryview(a).cast("B"))
        return self

    def names(self, names: Any) -> ContentHash:
        self._h.update(("classes|" + "\x1f".join(map(str, names)) + "|").encode())
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


DatasetFactory = Callable[[Path | None, int | None, bool, int], Dataset]
"""``fn(root, im_size, download, seed) -> Dataset``; ``im_size`` None keeps the native size."""

DATASETS: Registry[DatasetFactory] = Registry("dataset")


def load_dataset(
    name: str,
    root: str | Path | None = None,
    im_size: int | None = None,
    download: bool = False,
    seed: int = 0,
) -> Dataset:
    """Build the data set registered as ``name``.

    Args:
        name: a name in ``DATASETS`` (``DATASETS.names()`` lists them).
        root: folder holding the files; ignored by sets that need none (``digits``).
        im_size: resize every image to ``im_size`` x ``im_size`` (bilinear, antialiased) before
            normalization; None keeps the native size.
        download: let torchvision fetch missing files (needs internet); never implied.
        seed: seeds loaders that split data themselves (``digits``).

    Raises:
        UnknownNameError: ``name`` is not registered.
        DataError: bad ``im_size`` or missing/inconsistent files.
    """
    factory = DATASETS.get(name)
    if im_size is not None and (isinstance(im_size, bool) or not isinstance(im_size, int) or im_size < 1):
        raise DataError(f"data.im_size: must be a positive integer or null; got {im_size!r}")
    path = Path(root).expanduser() if root is not None else None
    return factory(path, im_size, bool(download), int(seed))


def to_float_images(raw: Tensor, im_size: int | None, scale: float = 255.0) -> Tensor:
    """Convert raw pixels to float32 in [0, 1] and optionally resize.

    Args:
        raw: (N, C, H, W) pixels of any numeric dtype, ``scale`` being the white value.
        im_size: target side, or None to keep H x W.
        scale: divisor mapping ``raw`` to [0, 1] (255 for uint8, 16 for sklearn digits).

    Returns:
        (N, C, S, S) float32 with S = ``im_size``, or (N, C, H, W) when ``im_size`` is None.
    """
    n, c, h, w = raw.shape
    size = (h, w) if im_size is None else (im_size, im_size)
    out = torch.empty((n, c, *size), dtype=torch.float32)
    for start in range(0, n, _CHUNK):
        chunk = raw[start : start + _CHUNK].to(torch.float32).div_(scale)
        if size != (h, w):
            # antialias matters when shrinking (e.g. 64 -> 32); otherwise bilinear aliases fine detail.
            chunk = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk.shape[0]] = chunk
    return out


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std.

    Args:
        x: (N, C, H, W) float images.

    Returns:
        (mean, std), each a tuple of C floats; a constant channel gets std 1.0 so normalizing never
        divides by 0.
    """
    count = x.shape[0] * x.shape[2] * x.shape[3]
    # float64 accumulation: a float32 sum over ~1e8 pixels loses several digits.
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, x.shape[0], _CHUNK):
        chunk = x[start : start + _CHUNK].to(torch.float64)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def normalize_(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """In-place per-channel ``(x - mean) / std`` of (N, C, H, W) ``x``; returns ``x``."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)

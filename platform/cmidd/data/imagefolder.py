"""``imagefolder``: ``root/train/<class>/*.png|jpg`` and ``root/test/<class>/*`` read into memory as RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import DataError
from ._registry import DATASETS, ContentHash, Dataset, channel_stats, normalize_, to_float_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    # Sorted so the order (and hence every seeded draw later) does not depend on the file system.
    return sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_rgb(path: Path) -> Tensor:
    """One image as (3, H, W) uint8."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"data.root: imagefolder cannot read image '{path}': {exc}") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _read_split(split_dir: Path, classes: list[str], im_size: int | None,
                hashed: ContentHash) -> tuple[Tensor, Tensor]:
    """Read every image of ``classes`` under ``split_dir``; each raw image (RGB pixels before resizing) and its
    label go into ``hashed`` in reading order.

    Returns:
        x (N, 3, S, S) float32 in [0, 1] (S = ``im_size``, or the shared native size when None) and
        y (N,) int64.

    Raises:
        DataError: ``im_size`` is None and the images are not all one square size.
    """
    images: list[Tensor] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in _image_files(split_dir / name):
            raw = _read_rgb(path)
            hashed.add(f"{split_dir.name}/{label}", raw)
            # Resize one by one when asked: images of differing sizes cannot be stacked first.
            images.append(to_float_images(raw.unsqueeze(0), im_size)[0] if im_size is not None else raw)
            labels.append(label)
    if not images:
        return torch.empty((0, 3, im_size or 0, im_size or 0)), torch.empty((0,), dtype=torch.int64)
    if im_size is None:
        sizes = sorted({tuple(t.shape[1:]) for t in images})
        if len(sizes) > 1 or sizes[0][0] != sizes[0][1]:
            shown = ", ".join(f"{h}x{w}" for h, w in sizes[:4]) + (", ..." if len(sizes) > 4 else "")
            raise DataError(
                f"data.im_size: imagefolder images under '{split_dir}' are not all one square size "
                f"(found {shown}); set data.im_size to resize them"
            )
        return to_float_images(torch.stack(images), None), torch.tensor(labels, dtype=torch.int64)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


EXPECTED = "train/<class>/*.png|jpg and test/<class>/* folders"


def _split_dirs(root: Path | None) -> tuple[Path, Path]:
    """``root/train`` and ``root/test``, or a ``DataError`` naming data.root and what is missing."""
    if root is None:
        raise DataError(f"data.root: imagefolder needs a folder with {EXPECTED}; got none; set data.root")
    train_dir, test_dir = root / "train", root / "test"
    for split_dir in (train_dir, test_dir):
        if not split_dir.is_dir():
            raise DataError(
                f"data.root: imagefolder needs {EXPECTED} under <root>; got '{root}' which has no "
                f"'{split_dir.name}' folder"
            )
    return train_dir, test_dir


def _check_classes(train_dir: Path, test_dir: Path) -> list[str]:
    """The sorted class names; train and test must have the same classes, and every train class images."""
    classes = _class_dirs(train_dir)
    if not classes:
        raise DataError(
            f"data.root: imagefolder found no class folders in '{train_dir}'; expected {EXPECTED}"
        )
    test_classes = _class_dirs(test_dir)
    if test_classes != classes:
        missing = sorted(set(classes) - set(test_classes))
        extra = sorted(set(test_classes) - set(classes))
        raise DataError(
            f"data.root: imagefolder test classes in '{test_dir}' must match the train classes; "
            f"missing {missing}, extra {extra}"
        )
    empty = [c for c in classes if not _image_files(train_dir / c)]
    if empty:
        raise DataError(
            f"data.root: imagefolder train classes without images ({', '.join(IMAGE_SUFFIXES)}): {empty}"
        )
    return classes


@DATASETS.register("imagefolder")
def load_imagefolder(root: Path | None, im_size: int | None, download: bool, seed: int) -> Dataset:
    """Load an on-disk class-per-folder image set; classes are the sorted ``train`` folder names.

    Every image becomes RGB (3 channels). Normalization mean/std are computed per channel on train.
    ``download`` and ``seed`` are unused (the folders define the split).

    Returns:
        Dataset with train_x (N, 3, S, S), test_x (M, 3, S, S); S = ``im_size`` or the shared native side.

    Raises:
        DataError: missing root/splits/classes, a class without training images, test class folders
            differing from train, unreadable images, or mixed sizes with ``im_size`` None.
    """
    del download, seed
    train_dir, test_dir = _split_dirs(root)
    classes = _check_classes(train_dir, test_dir)

    hashed = ContentHash().names(classes)  # the content of root: two roots of different images differ
    train_x, train_y = _read_split(train_dir, classes, im_size, hashed)
    test_x, test_y = _read_split(test_dir, classes, im_size, hashed)
    if test_x.shape[0] and test_x.shape[-1] != train_x.shape[-1]:
        raise DataError(
            f"data.im_size: imagefolder train images are {train_x.shape[-1]}px but test images are "
            f"{test_x.shape[-1]}px; set data.im_size to resize both"
        )
    if test_x.shape[0] == 0:
        test_x = test_x.new_empty((0, *train_x.shape[1:]))
    mean, std = channel_stats(train_x)
    return Dataset(
        name="imagefolder",
        train_x=normalize_(train_x, mean, std),
        train_y=train_y,
        test_x=normalize_(test_x, mean, std),
        test_y=test_y,
        num_classes=len(classes),
        channels=3,
        im_size=int(train_x.shape[-1]),
        mean=mean,
        std=std,
        class_names=tuple(classes),
        content_digest=hashed.hexdigest(),
    )

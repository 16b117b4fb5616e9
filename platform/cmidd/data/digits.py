"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images), usable fully offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._registry import DATASETS, ContentHash, Dataset, channel_stats, normalize_, to_float_images

TEST_FRACTION = 0.2
WHITE = 16.0  # sklearn digits pixels are counts 0..16


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class so train and test keep the class proportions.

    Args:
        labels: (N,) integer labels.
        test_fraction: share of each class that goes to test (rounded half up).
        seed: seeds a private ``numpy.random.default_rng``; same seed, same split.

    Returns:
        (train_idx, test_idx), each sorted ascending so the data keep their original order.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    # Classes in sorted order, each drawing from the same rng: the split depends only on labels and seed.
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(np.floor(test_fraction * len(idx) + 0.5))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@DATASETS.register("digits")
def load_digits(root: Path | None, im_size: int | None, download: bool, seed: int) -> Dataset:
    """Load sklearn digits with a seeded stratified 80/20 split; ``root`` and ``download`` are ignored.

    Returns:
        Dataset with train_x (1438, 1, S, S), test_x (359, 1, S, S), S = ``im_size`` or 8, normalized with
        the train split's mean/std.
    """
    # Imported here: sklearn takes a while to import and only this loader needs it.
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, seed)

    x = to_float_images(torch.from_numpy(images).unsqueeze(1), im_size, scale=WHITE)
    y = torch.from_numpy(labels)
    train_x, test_x = x[torch.from_numpy(train_idx)], x[torch.from_numpy(test_idx)]
    mean, std = channel_stats(train_x)
    num_classes = int(labels.max()) + 1
    class_names = tuple(str(c) for c in range(num_classes))
    digest = (ContentHash().add("train_x", images[train_idx]).add("train_y", labels[train_idx])
              .add("test_x", images[test_idx]).add("test_y", labels[test_idx]).names(class_names).hexdigest())
    return Dataset(
        name="digits",
        train_x=normalize_(train_x, mean, std),
        train_y=y[torch.from_numpy(train_idx)],
        test_x=normalize_(test_x, mean, std),
        test_y=y[torch.from_numpy(test_idx)],
        num_classes=num_classes,
        channels=1,
        im_size=int(x.shape[-1]),
        mean=mean,
        std=std,
        class_names=class_names,
        content_digest=digest,
        split_seed=int(seed),
    )

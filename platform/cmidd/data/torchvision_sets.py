"""CIFAR-10/100, SVHN, MNIST and Fashion-MNIST read from ``root`` in torchvision's on-disk format."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from ._registry import DATASETS, ContentHash, Dataset, normalize_, to_float_images


@dataclass(frozen=True)
class _Spec:
    """How to read one torchvision set.

    Attributes:
        tv_class: attribute name in ``torchvision.datasets``.
        files: what must be under root, for error messages.
        layout: ``"hwc"`` (CIFAR numpy (N,H,W,C)), ``"chw"`` (SVHN numpy (N,C,H,W)) or ``"hw"``
            (MNIST tensor (N,H,W)).
        split_kw: ``"train"`` (train=True/False) or ``"split"`` (split="train"/"test").
        mean: standard per-channel normalization mean.
        std: standard per-channel normalization std.
    """

    tv_class: str
    files: str
    layout: str
    split_kw: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Standard per-set statistics (the values the distillation literature normalizes with), not recomputed.
_SPECS: dict[str, _Spec] = {
    "cifar10": _Spec(
        "CIFAR10", "the CIFAR-10 python files (cifar-10-batches-py/)", "hwc", "train",
        (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
    ),
    "cifar100": _Spec(
        "CIFAR100", "the CIFAR-100 python files (cifar-100-python/)", "hwc", "train",
        (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762),
    ),
    "svhn": _Spec(
        "SVHN", "the SVHN files train_32x32.mat and test_32x32.mat", "chw", "split",
        (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
    ),
    "mnist": _Spec(
        "MNIST", "the MNIST files (MNIST/raw/)", "hw", "train",
        (0.1307,), (0.3081,),
    ),
    "fashionmnist": _Spec(
        "FashionMNIST", "the Fashion-MNIST files (FashionMNIST/raw/)", "hw", "train",
        (0.2861,), (0.3530,),
    ),
}


def normalization() -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """{set name: (mean, std)}: the constants each set is normalized with (an evaluation constant,
    ``cmidd.protocol.evaluation_constants``)."""
    return {k: (v.mean, v.std) for k, v in sorted(_SPECS.items())}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _open_split(name: str, spec: _Spec, root: Path | None, train: bool, download: bool) -> Any:
    """Instantiate the torchvision data set for one split, turning missing files into ``DataError``."""
    if root is None:
        raise DataError(
            f"data.root: {name} needs {spec.files} under a data root (torchvision format); got none; "
            f"set data.root to that folder (and data.download: true to fetch them)"
        )
    # Imported here: torchvision.datasets is slow to import and only these loaders need it.
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.tv_class)
    split = {"train": train} if spec.split_kw == "train" else {"split": "train" if train else "test"}
    try:
        return cls(str(root), download=download, **split)
    except (RuntimeError, OSError) as exc:
        # torchvision raises RuntimeError for missing/corrupt files; a failed fetch surfaces as OSError
        # (URLError).
        if download:
            raise DataError(
                f"data.root: {name} could not be fetched into '{root}' ({_one_line(exc)}); "
                f"place {spec.files} there yourself (torchvision format)"
            ) from exc
        raise DataError(
            f"data.root: {name} needs {spec.files} under <root> (torchvision format); got '{root}' "
            f"which does not contain them; set data.download: true to fetch them"
        ) from exc


def _arrays(ds: Any, layout: str) -> tuple[Tensor, Tensor]:
    """Whole-split raw pixels (N, C, H, W) uint8 and labels (N,) int64, without per-item PIL conversion."""
    data = torch.as_tensor(np.asarray(ds.data))
    if layout == "hwc":
        data = data.permute(0, 3, 1, 2)
    elif layout == "hw":
        data = data.unsqueeze(1)
    labels = ds.labels if hasattr(ds, "labels") else ds.targets
    return data.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.int64)


def _load(name: str, root: Path | None, im_size: int | None, download: bool, seed: int) -> Dataset:
    """Read both splits of ``name``, convert to float, resize and normalize with the standard stats.

    Returns:
        Dataset with (N, C, S, S) float32 images, S = ``im_size`` or the native 32 / 28.
    """
    del seed  # the official train/test split is used as is
    spec = _SPECS[name]
    train_ds = _open_split(name, spec, root, True, download)
    test_ds = _open_split(name, spec, root, False, download)
    train_raw, train_y = _arrays(train_ds, spec.layout)
    test_raw, test_y = _arrays(test_ds, spec.layout)
    hashed = (ContentHash().add("train_x", train_raw).add("train_y", train_y)
              .add("test_x", test_raw).add("test_y", test_y))
    train_x = normalize_(to_float_images(train_raw, im_size), spec.mean, spec.std)
    test_x = normalize_(to_float_images(test_raw, im_size), spec.mean, spec.std)
    classes = getattr(train_ds, "classes", None)  # SVHN has none; its labels are the digits 0..9
    num_classes = len(classes) if classes else int(train_y.max()) + 1
    class_names = tuple(str(c) for c in classes) if classes else tuple(str(c) for c in range(num_classes))
    return Dataset(
        name=name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        channels=int(train_x.shape[1]),
        im_size=int(train_x.shape[-1]),
        mean=spec.mean,
        std=spec.std,
        class_names=class_names,
        content_digest=hashed.names(class_names).hexdigest(),
    )


for _name in _SPECS:
    DATASETS.register(_name)(functools.partial(_load, _name))

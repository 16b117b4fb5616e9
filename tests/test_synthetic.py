"""SyntheticSet persistence: checksums, weights_only loading, tamper detection, grid."""

from __future__ import annotations

import json

import pytest
import torch

from cmidd.errors import IntegrityError
from cmidd.synthetic import SyntheticSet, content_sha256
from cmidd.files import sha256_file


def make_set(c=3, ipc=2, ch=1, s=8):
    g = torch.Generator().manual_seed(0)
    meta = {"dataset": "toy", "num_classes": c, "ipc": ipc, "channels": ch, "im_size": s,
            "mean": [0.5] * ch, "std": [0.25] * ch}
    return SyntheticSet(torch.randn(c * ipc, ch, s, s, generator=g), torch.arange(c).repeat_interleave(ipc), meta)


def test_save_load_roundtrip(tmp_path):
    s = make_set()
    folder = s.save(tmp_path / "set")
    assert {p.name for p in folder.iterdir()} == {"images.pt", "labels.pt", "manifest.json", "grid.png"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["sha256"]["images.pt"] == sha256_file(folder / "images.pt")
    assert manifest["content_sha256"] == s.sha256()
    back = SyntheticSet.load(folder)
    assert torch.equal(back.images, s.images) and torch.equal(back.labels, s.labels)
    assert back.meta["ipc"] == 2


def test_one_changed_byte_is_refused(tmp_path):
    folder = make_set().save(tmp_path / "set")
    raw = bytearray((folder / "images.pt").read_bytes())
    raw[-100] ^= 0xFF
    (folder / "images.pt").write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        SyntheticSet.load(folder)


def test_missing_file_is_refused(tmp_path):
    folder = make_set().save(tmp_path / "set")
    (folder / "labels.pt").unlink()
    with pytest.raises(IntegrityError, match="labels.pt is missing"):
        SyntheticSet.load(folder)


class Evil:
    """Stands for any object a pickle could smuggle in."""


def test_pickled_object_is_never_executed(tmp_path):
    # A file that unpickles arbitrary objects must not load: weights_only refuses it even with a matching sha.
    folder = make_set().save(tmp_path / "set")

    torch.save({"x": Evil()}, folder / "images.pt")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"]["images.pt"] = sha256_file(folder / "images.pt")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception) as e:
        SyntheticSet.load(folder)
    assert "weights_only" in str(e.value) or "Unsupported" in str(e.value) or "global" in str(e.value)


def test_content_sha_depends_on_values_and_shape():
    a = torch.zeros(2, 1, 2, 2)
    y = torch.tensor([0, 1])
    assert content_sha256(a, y) == content_sha256(a.clone(), y.clone())
    assert content_sha256(a, y) != content_sha256(a.reshape(2, 1, 1, 4), y)
    b = a.clone()
    b[0, 0, 0, 0] = 1e-7
    assert content_sha256(a, y) != content_sha256(b, y)


def test_grid_png_has_one_row_per_class(tmp_path):
    from PIL import Image

    folder = make_set(c=4, ipc=3, ch=3).save(tmp_path / "set")
    with Image.open(folder / "grid.png") as im:
        assert im.size[0] > 0 and im.size[1] > 0


def test_overwrite_is_atomic(tmp_path):
    make_set().save(tmp_path / "set")
    s2 = make_set(c=2)
    s2.save(tmp_path / "set")
    assert SyntheticSet.load(tmp_path / "set").num_classes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]

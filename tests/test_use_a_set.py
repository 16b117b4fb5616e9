"""docs/use-a-set.md's example runs as written on a real saved set, and cmidd.load_set's contract."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import cmidd
from cmidd.errors import ConfigError, IntegrityError
from cmidd.runner import random_real_set

ROOT = Path(__file__).resolve().parents[1]


def _example() -> str:
    text = (ROOT / "docs" / "use-a-set.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_docs_example_trains_a_model_from_a_saved_set(digits, tmp_path):
    folder = random_real_set(digits, 10, 0).save(tmp_path / "set")
    code = _example()
    assert 'cmidd.load_set("sets/digits-ipc10")' in code
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code.replace("sets/digits-ipc10", str(folder)), "use-a-set.md", "exec"), scope)
    model = scope["model"].eval()
    with torch.no_grad():
        acc = (model(digits.test_x).argmax(1) == digits.test_y).float().mean().item()
    assert acc > 0.6, acc  # 100 real digits train it well above chance (10%)


def test_load_set_is_a_verified_dataset(digits, tmp_path):
    s = random_real_set(digits, 3, 0)
    folder = s.save(tmp_path / "set")
    ds = cmidd.load_set(folder)
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 30
    x, y = ds[4]
    assert torch.equal(x, s.images[4]) and y == int(s.labels[4])
    assert ds.mean == tuple(digits.mean) and ds.classes == tuple(digits.class_names) and ds.meta["ipc"] == 3
    raw = s.dataset(normalized=False)
    assert 0 <= raw.images.min() and raw.images.max() <= 1
    (folder / "images.pt").write_bytes((folder / "images.pt").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(IntegrityError, match="images.pt"):
        cmidd.load_set(folder)
    with pytest.raises(ConfigError, match="DATASET/IPC"):
        cmidd.load_set(tmp_path / "nowhere")


def test_a_multi_formation_set_hands_out_its_decoded_images(digits):
    s = random_real_set(digits, 2, 0)
    s.meta["factor"] = 2
    assert len(s.dataset()) == 4 * len(s.images)

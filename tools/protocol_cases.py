"""The protocol ids of issue 34's cases, as markdown table rows (docs/registry.md), on the cmidd on PYTHONPATH.

    PYTHONPATH=platform .venv/bin/python tools/protocol_cases.py /tmp/cases

Builds two tiny imagefolder roots and two tiny MNIST-format (torchvision) roots of different images under the
given folder, then prints per case the two ids and whether they are the same. Runs on the format-1 API too
(``Protocol.of(eval, name, split_seed, im_size)``, before issue 34), for the "before" column.
"""

from __future__ import annotations

import inspect
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cmidd.config import EvalCfg
from cmidd.data import load_dataset
from cmidd.protocol import Protocol

NEW_API = "data" in inspect.signature(Protocol.of).parameters
EVAL = {"archs": ["ConvNetD2", "LeNet"], "num_eval": 1, "epochs": 3, "dsa_strategy": "crop_scale_rotate"}


def imagefolder(root: Path, shift: int, rng: np.random.Generator) -> Path:
    for split, n in (("train", 3), ("test", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = (rng.integers(0, 255, (8, 8, 3)) + shift) % 256
                Image.fromarray(px.astype(np.uint8)).save(root / split / c / f"{i}.png")
    return root


def mnist(root: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 20), ("t10k", 10)):
        img = rng.integers(0, 255, (n, 28, 28)).astype(np.uint8)
        lab = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + img.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + lab.tobytes())
    return root


def pid(over: dict, name: str, root: Path | None = None, split_seed: int = 0) -> str:
    ev = EvalCfg(**{**EVAL, **over})
    data = load_dataset(name, root=root, seed=split_seed)
    return (Protocol.of(ev, data) if NEW_API else Protocol.of(ev, name, split_seed, data.im_size)).id


def main(folder: str) -> None:
    tmp = Path(folder)
    rng = np.random.default_rng(0)
    f1, f2 = imagefolder(tmp / "if1", 0, rng), imagefolder(tmp / "if2", 7, rng)
    m1, m2 = mnist(tmp / "m1", 1), mnist(tmp / "m2", 2)
    cases = [
        ("two imagefolder roots", pid({}, "imagefolder", f1), pid({}, "imagefolder", f2)),
        ("two torchvision (MNIST) roots", pid({}, "mnist", m1), pid({}, "mnist", m2)),
        ("imagefolder, split_seed 0 / 1", pid({}, "imagefolder", f1, 0), pid({}, "imagefolder", f1, 1)),
        ("mnist, split_seed 0 / 1", pid({}, "mnist", m1, 0), pid({}, "mnist", m1, 1)),
        ("digits, split_seed 0 / 1", pid({}, "digits"), pid({}, "digits", split_seed=1)),
        ("eval.archs in two orders", pid({}, "digits"), pid({"archs": ["LeNet", "ConvNetD2"]}, "digits")),
        ("DSA ops in two orders (single)", pid({}, "digits"), pid({"dsa_strategy": "rotate_crop_scale"}, "digits")),
        ("dsa: false / dsa_strategy: none", pid({"dsa": False}, "digits"), pid({"dsa_strategy": "none"}, "digits")),
    ]
    for what, a, b in cases:
        print(f"| {what} | {a} {'=' if a == b else '!='} {b} |")


if __name__ == "__main__":
    main(sys.argv[1])

"""SyntheticSet: the distilled images, their labels and metadata; safe save/load with checksums.

On disk a set is a folder of plain tensors and a manifest::

    images.pt      (N, C, H, W) float32, normalized like the real data
    labels.pt      (N,) int64, class-ordered (ipc images of class 0, then class 1, ...)
    manifest.json  dataset, ipc, shapes, normalization, sha256 of each file, content sha256, config
    grid.png       one row per class, un-normalized (for people)

Loading verifies every sha256 and uses ``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .errors import IntegrityError
from .files import replace_dir, sha256_file

TENSOR_FILES = ("images.pt", "labels.pt")
MANIFEST = "manifest.json"
GRID = "grid.png"


def content_sha256(images: Tensor, labels: Tensor) -> str:
    """Checksum of the set's content (raw little-endian bytes of images and labels, shapes included).

    Independent of the file format, so it identifies a distilled set across save formats and machines.
    """
    h = hashlib.sha256()
    for t in (images, labels):
        t = t.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class SyntheticSet:
    """Class-ordered synthetic images with their labels and metadata.

    Attributes:
        images: (C*ipc, channels, H, W) float32, normalized with ``meta['mean']`` / ``meta['std']``.
        labels: (C*ipc,) int64.
        meta: dataset, num_classes, ipc, channels, im_size, mean, std, method, ... (JSON-serializable).
    """

    images: Tensor
    labels: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ipc(self) -> int:
        return int(self.meta["ipc"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def training_set(self) -> tuple[Tensor, Tensor]:
        """The images networks train on: the stored ones, decoded when the set uses multi-formation."""
        from .formation import decode

        return decode(self.images, self.labels, int(self.meta.get("factor", 1)))

    def dataset(self, normalized: bool = True) -> "SetDataset":
        """The set as a ``torch.utils.data.Dataset`` of its training images (decoded for multi-formation sets)
        and labels, normalized like the real data (``normalized=False``: pixels in [0, 1])."""
        images, labels = self.training_set()
        images = images.detach().cpu()
        if not normalized:
            mean = torch.tensor(self.meta["mean"]).view(1, -1, 1, 1)
            std = torch.tensor(self.meta["std"]).view(1, -1, 1, 1)
            images = (images * std + mean).clamp(0, 1)
        return SetDataset(images, labels.detach().cpu(), tuple(self.meta["mean"]), tuple(self.meta["std"]),
                          tuple(self.meta.get("class_names") or range(self.num_classes)), dict(self.meta))

    def sha256(self) -> str:
        """The content checksum of this set (see ``content_sha256``)."""
        return content_sha256(self.images, self.labels)

    def denormalized(self) -> Tensor:
        """Images in [0, 1] pixel space (clamped), for display."""
        mean = torch.tensor(self.meta["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(self.meta["std"]).view(1, -1, 1, 1)
        return (self.images.detach().cpu() * std + mean).clamp(0, 1)

    # -- persistence -------------------------------------------------------------------------------

    def save(self, folder: str | Path, grid: bool = True) -> Path:
        """Write tensors, manifest (with checksums) and grid to ``folder`` atomically.

        Files are written into a temporary sibling folder that is renamed into place at the end, so a
        crash never leaves a half-written set.

        Returns:
            The folder.
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        torch.save(self.images.detach().cpu().contiguous().float(), tmp / "images.pt")
        torch.save(self.labels.detach().cpu().contiguous().long(), tmp / "labels.pt")
        manifest = {
            **self.meta,
            "shapes": {"images": list(self.images.shape), "labels": list(self.labels.shape)},
            "sha256": {name: sha256_file(tmp / name) for name in TENSOR_FILES},
            "content_sha256": self.sha256(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if grid:
            save_grid(self, tmp / GRID)
        replace_dir(tmp, folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> "SyntheticSet":
        """Load a saved set, verifying every checksum.

        Raises:
            IntegrityError: a file is missing or does not match its sha256 in the manifest.
        """
        folder = Path(folder)
        manifest = verify_folder(folder)
        images = torch.load(folder / "images.pt", map_location=map_location, weights_only=True)
        labels = torch.load(folder / "labels.pt", map_location=map_location, weights_only=True)
        meta = {k: v for k, v in manifest.items() if k not in ("shapes", "sha256", "content_sha256")}
        s = cls(images, labels, meta)
        if s.sha256() != manifest["content_sha256"]:
            raise IntegrityError(f"{folder}: tensor content does not match content_sha256 in {MANIFEST}")
        return s


class SetDataset(Dataset):
    """A distilled set's training images and labels as a map-style Dataset: ``ds[i] -> (image, label)``.

    Attributes:
        images: (N, C, H, W) float32; labels: (N,) int64.
        mean, std: the real data's normalization (``torchvision.transforms.Normalize(mean, std)``).
        classes: class names, index = label.
        meta: the set's manifest (data set, IPC, method, lambda, config).
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                 classes: tuple, meta: dict[str, Any]) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std
        self.classes, self.meta = tuple(str(c) for c in classes), meta

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])


def verify_folder(folder: str | Path) -> dict[str, Any]:
    """Check that ``folder`` holds a manifest and tensor files matching their sha256; return the manifest.

    Raises:
        IntegrityError: naming the first file that is missing or altered.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise IntegrityError(f"{folder}: no {MANIFEST}: not a synthetic set") from None
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{folder}/{MANIFEST}: corrupt JSON ({e.msg})") from None
    for name in TENSOR_FILES:
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{folder}: {name} is missing")
        got, want = sha256_file(path), manifest.get("sha256", {}).get(name)
        if got != want:
            raise IntegrityError(f"{path}: sha256 mismatch (manifest {want}, file {got}): refusing to load")
    return manifest


def save_grid(synset: SyntheticSet, path: str | Path, max_per_row: int = 20, min_side: int = 512) -> Path:
    """PNG grid of the set, one row per class (at most ``max_per_row`` images each), un-normalized, upscaled with
    nearest neighbours so that its longer side is at least ``min_side`` pixels (8x8 digits stay legible)."""
    import torchvision.utils as vutils

    imgs = synset.denormalized()
    c_num, ipc = synset.num_classes, synset.ipc
    cols = min(ipc, max_per_row)
    imgs = imgs.view(c_num, ipc, *imgs.shape[1:])[:, :cols].reshape(c_num * cols, *imgs.shape[1:])
    scale = max(1, -(-min_side // (max(c_num, cols) * (imgs.shape[-1] + 2))))  # ceil: at least min_side
    imgs = torch.nn.functional.interpolate(imgs, scale_factor=scale, mode="nearest")
    path = Path(path)
    vutils.save_image(vutils.make_grid(imgs, nrow=cols, padding=2 * scale, pad_value=1.0), path)
    return path

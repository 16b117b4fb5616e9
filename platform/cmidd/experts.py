"""Expert trajectories for MTT: networks trained on the real data, their parameters kept after every epoch.

A trajectory is one (epochs + 1, P) float32 tensor: row 0 is the initialization, row e the flattened
parameters (``named_parameters`` order, buffers excluded) after epoch e. A folder holds
``expert_000.pt ...`` plus ``manifest.json`` (data shape, net, training settings, sha256 of every file);
loading verifies the checksums and uses ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .augment import DSAParams
from .data import Dataset
from .errors import DataError, IntegrityError
from .nets import create_net
from .files import replace_dir, sha256_file
from .progress import Progress
from .training import accuracy, seeded_net, train_classifier

if TYPE_CHECKING:
    from .config import ExpertsCfg, NetCfg

log = logging.getLogger(__name__)


def flat_params(net: nn.Module) -> Tensor:
    """The net's parameters as one vector, in ``named_parameters`` order."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).cpu()


def unflatten(vec: Tensor, net: nn.Module) -> dict[str, Tensor]:
    """Views of ``vec`` shaped as ``net``'s parameters (for ``torch.func.functional_call``); keeps the graph.

    One ``split`` (whose backward is one ``cat``) rather than a slice per parameter (whose backward fills a
    zero vector of the full size per parameter and step): the unrolled MTT student differentiates this often.
    """
    named = list(net.named_parameters())
    sizes = [p.numel() for _, p in named]
    if sum(sizes) != vec.numel():
        raise DataError(f"a trajectory of {vec.numel()} parameters does not fit a net with {sum(sizes)}")
    return {name: part.view_as(p) for (name, p), part in zip(named, vec.split(sizes))}


def train_experts(cfg: ExpertsCfg, net_cfg: NetCfg, data: Dataset, seed: int, device) -> list[tuple[Tensor, float]]:
    """Train ``cfg.num`` experts; returns (trajectory, final test accuracy) per expert."""
    out = []
    dsa_params = DSAParams(strategy=cfg.dsa_strategy, mode=cfg.dsa_mode) if cfg.dsa else None
    x, y = data.train_x.to(device), data.train_y.to(device)
    bar = Progress(f"train {cfg.num} experts", cfg.num * cfg.epochs)  # in epochs
    for i in range(cfg.num):
        s = seed * 1_000_003 + 7_919 * (i + 1)
        net = seeded_net(
            lambda: create_net(net_cfg.name, data.channels, data.num_classes, data.im_size, **net_cfg.kwargs()),
            s, device,
        )
        names = [n for n, _ in net.named_parameters()]
        start = flat_params(net)
        snaps = train_classifier(
            net, x, y, epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, weight_decay=0.0, batch=cfg.batch,
            gen=torch.Generator().manual_seed(s), dsa_params=dsa_params,
            snapshot_epochs=tuple(range(1, cfg.epochs + 1)),
            on_epoch=lambda e, i=i: bar.update(i * cfg.epochs + e, note=f"expert {i + 1}/{cfg.num}"),
        )
        rows = [start] + [torch.cat([snap[n].reshape(-1) for n in names]) for snap in snaps]
        acc = accuracy(net, data.test_x.to(device), data.test_y.to(device))
        log.info("expert %d/%d (%s, %d epochs): test acc %.4f", i + 1, cfg.num, net_cfg.name, cfg.epochs, acc)
        out.append((torch.stack(rows), acc))
    bar.close()
    return out


def default_dir(cfg: ExpertsCfg, net_cfg: NetCfg, data: Dataset, jobs_root: Path) -> Path:
    if cfg.dir is not None:
        return Path(cfg.dir)
    return jobs_root / "experts" / f"{data.name}{data.im_size}-{net_cfg.name}-n{cfg.num}-e{cfg.epochs}"


def save(folder: Path, cfg: ExpertsCfg, net_cfg: NetCfg, data: Dataset, trained) -> Path:
    """Write trajectories and manifest atomically (a temp folder renamed into place)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    entries = []
    for i, (traj, acc) in enumerate(trained):
        name = f"expert_{i:03d}.pt"
        torch.save(traj.contiguous(), tmp / name)
        entries.append({"file": name, "sha256": sha256_file(tmp / name), "test_acc": acc,
                        "shape": list(traj.shape)})
    manifest = {"dataset": data.name, "channels": data.channels, "im_size": data.im_size,
                "num_classes": data.num_classes, "net": net_cfg.model_dump(mode="json"),
                "experts_cfg": cfg.model_dump(mode="json", exclude={"dir"}), "experts": entries}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    replace_dir(tmp, folder)
    return folder


def load(folder: Path, net_cfg: NetCfg, data: Dataset) -> list[Tensor]:
    """Load verified trajectories that fit ``net_cfg`` and ``data``.

    Raises:
        DataError: no experts there, or trained for another net or data shape.
        IntegrityError: a file is missing or altered.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        raise DataError(f"experts.dir: {folder} holds no expert trajectories (no manifest.json)") from None
    want = {"channels": data.channels, "im_size": data.im_size, "num_classes": data.num_classes,
            "net": net_cfg.model_dump(mode="json")}
    got = {k: manifest.get(k) for k in want}
    if got != want:
        raise DataError(f"experts.dir: {folder} was trained for {got}, but the job needs {want}")
    verify_files(folder, manifest)
    return [torch.load(folder / e["file"], map_location="cpu", weights_only=True) for e in manifest["experts"]]


def verify_files(folder: Path, manifest: dict, label: str | None = None) -> None:
    """Every trajectory file of ``manifest`` exists in ``folder`` and matches its sha256 (else IntegrityError)."""
    for e in manifest["experts"]:
        path = folder / e["file"]
        if not path.is_file() or sha256_file(path) != e["sha256"]:
            raise IntegrityError(f"{label or folder}/{e['file']}: missing or sha256 mismatch: refusing to load")


def ensure(cfg: ExpertsCfg, net_cfg: NetCfg, data: Dataset, folder: Path, seed: int, device) -> list[Tensor]:
    """Load the experts from ``folder``; train and save them first if missing and allowed."""
    if not (folder / "manifest.json").is_file():
        if not cfg.train_if_missing:
            raise DataError(f"experts.dir: no experts at {folder} and experts.train_if_missing is false")
        log.info("training %d experts into %s", cfg.num, folder)
        save(folder, cfg, net_cfg, data, train_experts(cfg, net_cfg, data, seed, device))
    return load(folder, net_cfg, data)

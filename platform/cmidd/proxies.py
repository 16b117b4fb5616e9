"""The proxy zoo: named proxy sets, their pre-training on the real train split, save and verified load.

A proxy set is a recipe (architectures, seeds, pre-training epochs) registered by name. Proxies that share an
(architecture, seed) come from one training run snapshotted at several epochs (training stages, as the
paper's proxies span pre-training epochs). On disk::

    <dir>/proxy_000.pt ...   state dicts (plain tensors)
    <dir>/manifest.json      dataset, channels, im_size, num_classes, set, and per proxy:
                             arch, seed, epoch, file, sha256, test accuracy

Loading verifies every checksum, uses ``weights_only=True`` and checks that the proxies fit the data. The
proxies are built once and kept in memory for the whole run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .cmi import freeze
from .data import Dataset
from .errors import DataError, IntegrityError
from .nets import create_net
from .progress import Progress
from .proxy_sets import ProxySpec, proxy_specs
from .files import replace_dir, sha256_file
from .training import accuracy, seeded_net, train_classifier

if TYPE_CHECKING:
    from .config import ProxiesCfg

log = logging.getLogger(__name__)


def default_dir(cfg: ProxiesCfg, data: Dataset, jobs_root: Path) -> Path:
    """Where a proxy set lives unless ``proxies.dir`` says otherwise: shared by the jobs of one root."""
    if cfg.dir is not None:
        return cfg.dir
    epochs = f"-e{cfg.epochs}" if cfg.epochs else ""
    return jobs_root / "proxies" / f"{data.name}-{data.im_size}px-{cfg.set}{epochs}"


def pretrain(cfg: ProxiesCfg, data: Dataset, seed: int, device: torch.device | str = "cpu"):
    """Pre-train the proxies of ``cfg.set`` on the real train split (SGD, no augmentation, as the paper).

    Returns:
        List of (spec, state_dict, test_acc), in the set's order.
    """
    device = torch.device(device)
    specs = proxy_specs(cfg)
    x, y = data.train_x.to(device), data.train_y.to(device)
    xt, yt = data.test_x.to(device), data.test_y.to(device)
    runs: dict[tuple[str, int], list[int]] = {}
    for s in specs:  # one training run per (arch, seed), snapshotted at each requested epoch
        runs.setdefault((s.arch, s.seed), []).append(s.epochs)
    states: dict[ProxySpec, tuple[dict, float]] = {}
    bar = Progress(f"pre-train {len(runs)} proxies", sum(max(e) for e in runs.values()))  # in epochs
    done = 0
    for i, ((arch, s), epochs) in enumerate(runs.items()):
        run_seed = seed * 7919 + s

        def build(arch=arch):
            return create_net(arch, data.channels, data.num_classes, data.im_size)

        net = seeded_net(build, run_seed, device)
        snap_epochs = tuple(sorted(set(epochs)))
        snaps = train_classifier(
            net, x, y, epochs=max(snap_epochs), lr=cfg.lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, batch=cfg.batch, gen=torch.Generator().manual_seed(run_seed),
            snapshot_epochs=snap_epochs,
            on_epoch=lambda e, base=done, i=i, arch=arch: bar.update(base + e, note=f"{i + 1}/{len(runs)}: {arch}"),
        )
        done += max(snap_epochs)
        for e, state in zip(snap_epochs, snaps):
            net.load_state_dict(state)
            acc = accuracy(net, xt, yt)
            states[ProxySpec(arch, s, e)] = (state, acc)
            log.info("proxy %s seed %d epoch %d: test acc %.4f", arch, s, e, acc)
    bar.close()
    return [(s, *states[s]) for s in specs]


def save(folder: str | Path, cfg: ProxiesCfg, data: Dataset, trained) -> Path:
    """Write proxies and manifest to ``folder`` atomically (temp folder renamed into place)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    entries = []
    for i, (spec, state, acc) in enumerate(trained):
        name = f"proxy_{i:03d}.pt"
        torch.save(state, tmp / name)
        entries.append({**asdict(spec), "file": name, "sha256": sha256_file(tmp / name), "test_acc": acc})
    manifest = {
        "dataset": data.name, "channels": data.channels, "im_size": data.im_size,
        "num_classes": data.num_classes, "set": cfg.set, "proxies": entries,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    replace_dir(tmp, folder)
    return folder


def load(folder: str | Path, data: Dataset, device: torch.device | str = "cpu") -> list[nn.Module]:
    """Load a saved proxy set as frozen nets in eval mode, verifying checksums and fit to ``data``.

    Raises:
        IntegrityError: a file is missing or altered.
        DataError: the proxies were trained for another data shape or class count.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        raise DataError(f"proxies.dir: {folder} holds no proxy set (no manifest.json)") from None
    want = {"channels": data.channels, "im_size": data.im_size, "num_classes": data.num_classes}
    got = {k: manifest.get(k) for k in want}
    if got != want:
        raise DataError(f"proxies.dir: {folder} was trained for {got}, but the data is {want}")
    verify_files(folder, manifest)
    nets = []
    for entry in manifest["proxies"]:
        path = folder / entry["file"]
        net = create_net(entry["arch"], data.channels, data.num_classes, data.im_size)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        nets.append(freeze(net.to(device)))
    return nets


def verify_files(folder: Path, manifest: dict, label: str | None = None) -> None:
    """Check that every proxy file listed in ``manifest`` exists in ``folder`` and matches its sha256.

    Raises:
        IntegrityError: naming the first missing or altered file.
    """
    for entry in manifest["proxies"]:
        path = folder / entry["file"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise IntegrityError(f"{label or folder}/{entry['file']}: missing or sha256 mismatch: refusing to load")


def ensure(cfg: ProxiesCfg, data: Dataset, folder: Path, seed: int, device) -> list[nn.Module]:
    """Load the proxy set from ``folder``; pre-train and save it first if missing and allowed."""
    if not (folder / "manifest.json").is_file():
        if not cfg.pretrain_if_missing:
            raise DataError(f"proxies.dir: no proxy set at {folder} and proxies.pretrain_if_missing is false")
        log.info("pre-training proxy set %s into %s", cfg.set, folder)
        save(folder, cfg, data, pretrain(cfg, data, seed, device))
    return load(folder, data, device)


def pack(folder: str | Path) -> dict[str, bytes]:
    """A verified proxy set's files as bytes (``manifest.json`` and every proxy it lists), to ship to a machine
    that cannot read ``folder`` (a search's trials on other nodes: ``cmidd.ray.tune``).

    Raises:
        IntegrityError: a file is missing or altered.
    """
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    verify_files(folder, manifest)
    return {"manifest.json": (folder / "manifest.json").read_bytes(),
            **{e["file"]: (folder / e["file"]).read_bytes() for e in manifest["proxies"]}}


def unpack(files: dict[str, bytes], folder: str | Path) -> Path:
    """Write a ``pack``ed proxy set to ``folder`` unless a verified copy is there: files into a temporary sibling,
    checked against the manifest's sha256, then renamed into place.

    Raises:
        IntegrityError: the shipped files do not match their manifest.
    """
    folder = Path(folder)
    manifest = json.loads(files["manifest.json"])
    if (folder / "manifest.json").is_file():
        try:
            verify_files(folder, json.loads((folder / "manifest.json").read_text()))
            return folder
        except (IntegrityError, ValueError, KeyError):
            pass
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    for name, blob in files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise IntegrityError(f"{folder}: a shipped proxy file name leaves the folder: {name!r}")
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(blob)
    verify_files(tmp, manifest, str(folder))
    replace_dir(tmp, folder)
    return folder

"""The registry of proxies and MTT expert trajectories: publish a verified folder, fetch one back by name.

``proxy-<dataset>-<arch>``: one version per proxy, source ``runs:/<run>/proxies/<stem>``;
``experts-<dataset>-<net>``: one version per expert folder, source ``runs:/<run>/experts``. A distill job's
``proxies.from_registry`` is resolved here into a local verified copy before the job runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .. import proxies as proxy_zoo
from ..experts import verify_files as verify_expert_files
from ..errors import IntegrityError, UnknownNameError
from ..proxy_sets import PROXY_SETS
from ..synthetic import MANIFEST
from ..files import replace_dir
from ._client import EXPERTS, PROXIES, client_for, ensure_model, mlflow_errors, resolve_uri
from ._sets import download_source
from ._tags import code_version

log = logging.getLogger(__name__)


def proxy_model_name(dataset: str, arch: str) -> str:
    """``proxy-<dataset>-<arch>``."""
    return f"proxy-{dataset}-{arch}"


def _proxy_layout(src: Path, dst: Path) -> dict[str, Any]:
    """Lay a saved proxy set out for upload: one sub-folder per proxy with its own one-entry manifest (a
    version's source), and the set's manifest at the top pointing into them (``proxies.load`` reads both)."""
    manifest = json.loads((src / "manifest.json").read_text())
    head = {k: v for k, v in manifest.items() if k != "proxies"}
    entries = []
    for e in manifest["proxies"]:
        stem = Path(e["file"]).stem
        (dst / stem).mkdir(parents=True)
        shutil.copy2(src / e["file"], dst / stem / e["file"])
        (dst / stem / "manifest.json").write_text(json.dumps({**head, "proxies": [e]}, indent=2))
        entries.append({**e, "file": f"{stem}/{e['file']}"})
    set_manifest = {**head, "proxies": entries}
    (dst / "manifest.json").write_text(json.dumps(set_manifest, indent=2))
    return set_manifest


def verify_proxy_folder(folder: Path, label: str | None = None) -> dict[str, Any]:
    """Check that every proxy file in ``folder``'s manifest exists and matches its sha256.

    Raises:
        IntegrityError: naming the first missing or altered file.
    """
    label = label or str(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        raise IntegrityError(f"{label}: no readable manifest.json: not a proxy set") from None
    proxy_zoo.verify_files(folder, manifest, label)
    return manifest


def publish_proxies(client: MlflowClient, run_id: str, job, folder: Path,
                    created: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Upload a pre-trained proxy set, verify it by download, register each proxy as a version of
    ``proxy-<dataset>-<arch>``.

    Returns:
        [{"name", "version", "alias": None}] in the set's order.
    """
    with tempfile.TemporaryDirectory(prefix="cmidd-proxies-") as tmp:
        manifest = _proxy_layout(folder, Path(tmp) / PROXIES)
        client.log_artifacts(run_id, str(Path(tmp) / PROXIES), PROXIES)
    with tempfile.TemporaryDirectory(prefix="cmidd-verify-") as tmp:
        got = Path(client.download_artifacts(run_id, PROXIES, tmp))
        verify_proxy_folder(got, f"runs:/{run_id}/{PROXIES}")
    out = created if created is not None else []
    for e in manifest["proxies"]:
        name = proxy_model_name(manifest["dataset"], e["arch"])
        ensure_model(client, name, f"{e['arch']} proxies pre-trained on {manifest['dataset']}",
                      {"dataset": str(manifest["dataset"]), "arch": e["arch"]})
        tags = {"dataset": manifest["dataset"], "im_size": manifest["im_size"], "set": manifest["set"],
                "arch": e["arch"], "seed": e["seed"], "epochs": e["epochs"],
                "test_acc": f"{e['test_acc']:.6g}",
                "sha256": e["sha256"], "code_version": code_version()}
        source = f"runs:/{run_id}/{PROXIES}/{Path(e['file']).parent}"
        tags = {k: str(v) for k, v in tags.items()}
        mv = client.create_model_version(name, source, run_id=run_id, tags=tags)
        out.append({"name": name, "version": int(mv.version), "alias": None})
    return out


def _proxy_sources(client: MlflowClient, ref: str, dataset: str, im_size: int) -> list[str]:
    """The ``runs:/`` sources a ``proxies.from_registry`` reference means.

    ``ref`` is either a proxy set name (``convnet-x4``: the newest finished run that registered that set
    for this dataset and image size) or comma-separated registered proxies
    (``proxy-digits-ConvNet``, ``.../3`` for a version, ``...@alias``; no suffix = the newest version).
    """
    parts = [p.strip() for p in ref.split(",") if p.strip()]
    if not all(p.startswith("proxy-") for p in parts):
        PROXY_SETS.get(ref)  # UnknownNameError lists the set names
        return [_newest_set_source(client, ref, dataset, im_size)]
    return [_proxy_version(client, p).source for p in parts]


def _newest_set_source(client: MlflowClient, set_name: str, dataset: str, im_size: int) -> str:
    flt = f"name LIKE 'proxy-{dataset}-%' AND tags.set = '{set_name}' AND tags.im_size = '{im_size}'"
    runs = {}
    for mv in client.search_model_versions(flt):
        with contextlib.suppress(MlflowException):
            run = client.get_run(mv.run_id)
            if run.info.status == "FINISHED" and run.info.lifecycle_stage == "active":
                runs[run.info.run_id] = run.info.start_time
    if not runs:
        raise UnknownNameError(
            f"proxies.from_registry: no registered proxy set {set_name!r} for {dataset} at {im_size}px; "
            "run a pretrain-proxies job with tracking first"
        )
    return f"runs:/{max(runs, key=runs.get)}/{PROXIES}"


def _proxy_version(client: MlflowClient, ref: str):
    name, version, alias = ref, None, None
    if "@" in ref:
        name, alias = ref.split("@", 1)
    elif "/" in ref:
        name, version = ref.split("/", 1)
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version:
            return client.get_model_version(name, version)
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        raise UnknownNameError(f"proxies.from_registry: no registered proxy {ref!r}") from None
    if not versions:
        raise UnknownNameError(f"proxies.from_registry: {name!r} has no versions")
    return max(versions, key=lambda v: int(v.version))


def fetch_proxies(ref: str, data, dest_root: Path, uri: str | None = None,
                  client: MlflowClient | None = None) -> Path:
    """Download the proxies ``ref`` names (see ``_proxy_sources``) into a verified proxy-set folder.

    The folder is ``dest_root/registry-<hash of the sources>``: the same registry state gives the same
    folder (reused if it verifies), so a resumed job sees an unchanged config.

    Returns:
        The folder, loadable with ``proxies.load(folder, data)``.
    """
    client = client or client_for(resolve_uri(uri))
    sources = _proxy_sources(client, ref, data.name, data.im_size)
    dest = Path(dest_root) / f"registry-{hashlib.sha256(' '.join(sources).encode()).hexdigest()[:12]}"
    with contextlib.suppress(IntegrityError):
        verify_proxy_folder(dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        head, entries = {}, []
        for i, src in enumerate(sources):
            got = download_source(client, src, str(tmp / f"{i:02d}"))
            manifest = verify_proxy_folder(got, src)
            head = head or {k: v for k, v in manifest.items() if k != "proxies"}
            rel = got.relative_to(tmp)
            entries += [{**e, "file": f"{rel}/{e['file']}"} for e in manifest["proxies"]]
        (tmp / "manifest.json").write_text(json.dumps({**head, "set": ref, "proxies": entries}, indent=2))
        replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_proxies_from_registry(ref: str, data, uri: str | None = None, device="cpu",
                               cache: Path | None = None):
    """Frozen proxy nets from the registry (a proxy set name or registered proxies, see ``fetch_proxies``).

    Example:
        >>> nets = load_proxies_from_registry("convnet-x4", load_dataset("digits"), "sqlite:///mlflow.db")
    """
    with mlflow_errors():
        if cache is not None:
            return proxy_zoo.load(fetch_proxies(ref, data, cache, uri), data, device)
        with tempfile.TemporaryDirectory(prefix="cmidd-proxies-") as tmp:
            return proxy_zoo.load(fetch_proxies(ref, data, Path(tmp), uri), data, device)


def resolve_registry_proxies(job, data, uri: str | None = None, client: MlflowClient | None = None):
    """A distill job whose ``proxies.from_registry`` is replaced by a local verified copy (``proxies.dir``).

    The copy lives beside the job's folder (``<output.dir>/../proxies/registry-<hash>``), shared by jobs
    that resolve to the same proxies. Other jobs are returned unchanged.
    """
    cfg = getattr(job, "proxies", None)
    if job.kind != "distill" or cfg is None or cfg.from_registry is None:
        return job
    folder = fetch_proxies(cfg.from_registry, data, job.output.dir.parent / "proxies", uri, client)
    log.info("proxies.from_registry %r -> %s", cfg.from_registry, folder)
    new = cfg.model_copy(update={"dir": folder, "from_registry": None, "pretrain_if_missing": False})
    return job.model_copy(update={"proxies": new})



def experts_model_name(dataset: str, net: str) -> str:
    """``experts-<dataset>-<net>``."""
    return f"experts-{dataset}-{net}"


def publish_experts(client: MlflowClient, run_id: str, folder: Path,
                    created: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Upload an expert-trajectory folder, verify it by download, register it as one version of
    ``experts-<dataset>-<net>`` (source ``runs:/<run>/experts``)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    client.log_artifacts(run_id, str(folder), EXPERTS)
    with tempfile.TemporaryDirectory(prefix="cmidd-verify-") as tmp:
        got = Path(client.download_artifacts(run_id, EXPERTS, tmp))
        verify_expert_files(got, json.loads((got / MANIFEST).read_text()), f"runs:/{run_id}/{EXPERTS}")
    net = manifest["net"]["name"]
    name = experts_model_name(manifest["dataset"], net)
    ensure_model(client, name, f"MTT expert trajectories of {net} on {manifest['dataset']}",
                  {"dataset": str(manifest["dataset"]), "net": net})
    cfg = manifest["experts_cfg"]
    tags = {"dataset": manifest["dataset"], "im_size": manifest["im_size"], "net": net, "num": cfg["num"],
            "epochs": cfg["epochs"], "sha256": ",".join(e["sha256"] for e in manifest["experts"]),
            "code_version": code_version()}
    mv = client.create_model_version(name, f"runs:/{run_id}/{EXPERTS}", run_id=run_id,
                                     tags={k: str(v) for k, v in tags.items()})
    out = created if created is not None else []
    out.append({"name": name, "version": int(mv.version), "alias": None})
    return out

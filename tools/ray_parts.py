"""Ray for the GPU machine, which reaches no registry, in two device calls (each carries at most 64 MiB).

The ray wheel for Python 3.12 is 79 MB; with the few packages Ray Train imports that the GPU image lacks
(``make wheels-ray``: jsonschema and its three, colorful, wcwidth) the wheels are tarred (fixed order, mtime 0) and
cut into parts of at most ``--max-mib``, one set of parts per call: ``.ray-parts/a``, ``.ray-parts/b``. Every set
holds the manifest (the sha256 of each part, of the tar and of each wheel), so the join checks every byte::

    make wheels-ray                       # here: download, split into .ray-parts/{a,b}, verify the round trip
    # device call 1: carry [".ray-parts/a"],                        command: tools/ray_parts.py stash
    # device call 2 (within the 30 s the machine stays warm):
    #                carry [".whl", ".seedbench", ".ray-parts/b"], command: tools/gpu_run.sh
    tools/ray_parts.py install --target /tmp/cmidd-ray-site   # what gpu_run.sh runs: join, verify, pip install

``stash`` copies the sets to ``/tmp/cmidd-ray-parts`` (a later call may replace the working tree's copy);
``join``/``install`` look in ``.ray-parts/*`` and there. Exit 1 with one line when a part is missing or altered.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ROOT / ".ray-parts"
STASH = Path("/tmp/cmidd-ray-parts")
MANIFEST = "manifest.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_bytes(src: Path) -> bytes:
    """The wheels of ``src`` as one uncompressed tar, in name order with fixed metadata (same bytes every time)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for p in sorted(src.glob("*.whl")):
            info = tarfile.TarInfo(p.name)
            info.size, info.mtime, info.mode = p.stat().st_size, 0, 0o644
            tar.addfile(info, io.BytesIO(p.read_bytes()))
    return buf.getvalue()


def split(src: Path, out: Path, max_mib: float) -> dict:
    """Parts of at most ``max_mib`` MiB, one per set folder ``out/a``, ``out/b``, ...; the manifest in each."""
    wheels = {p.name: sha256(p.read_bytes()) for p in sorted(src.glob("*.whl"))}
    if not wheels:
        raise SystemExit(f"ray_parts: no wheels in {src} (run 'make wheels-ray')")
    data = tar_bytes(src)
    n = max(1, math.ceil(len(data) / (max_mib * 2**20)))
    size = math.ceil(len(data) / n)
    parts = []
    if out.exists():
        shutil.rmtree(out)
    for i in range(n):
        chunk = data[i * size : (i + 1) * size]
        folder = out / chr(ord("a") + i)
        folder.mkdir(parents=True)
        name = f"part-{i:02d}"
        (folder / name).write_bytes(chunk)
        parts.append({"set": folder.name, "name": name, "bytes": len(chunk), "sha256": sha256(chunk)})
    manifest = {"parts": parts, "tar_bytes": len(data), "tar_sha256": sha256(data), "wheels": wheels}
    for p in parts:
        (out / p["set"] / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _find(name: str, roots: list[Path]) -> Path | None:
    for root in roots:
        for cand in sorted(root.glob(f"*/{name}")):
            return cand
    return None


def join(roots: list[Path], to: Path) -> dict:
    """Verify every part, the tar and every wheel against the manifest; the wheels extracted into ``to``."""
    found = _find(MANIFEST, roots)
    if found is None:
        raise SystemExit(f"ray_parts: no {MANIFEST} under {', '.join(map(str, roots))} (carry .ray-parts/<set>)")
    manifest = json.loads(found.read_text())
    chunks = []
    for p in manifest["parts"]:
        path = _find(p["name"], roots)
        if path is None:
            raise SystemExit(f"ray_parts: part {p['name']} (set {p['set']}) is missing: carry .ray-parts/{p['set']} "
                             f"(or stash it in an earlier call on the same machine)")
        chunk = path.read_bytes()
        if sha256(chunk) != p["sha256"]:
            raise SystemExit(f"ray_parts: part {p['name']} is altered (sha256 {sha256(chunk)[:12]} != "
                             f"{p['sha256'][:12]})")
        chunks.append(chunk)
    data = b"".join(chunks)
    if sha256(data) != manifest["tar_sha256"]:
        raise SystemExit("ray_parts: the joined tar's sha256 differs from the manifest's")
    to.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(to, filter="data")
    for name, digest in manifest["wheels"].items():
        if sha256((to / name).read_bytes()) != digest:
            raise SystemExit(f"ray_parts: wheel {name} differs after the join")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="tar the wheels and cut them into sets of parts")
    s.add_argument("--src", type=Path, default=ROOT / ".ray-wheels")
    s.add_argument("--out", type=Path, default=PARTS)
    s.add_argument("--max-mib", type=float, default=50.0, help="the largest part (a call carries 64 MiB in all)")
    v = sub.add_parser("verify", help="join the parts here and compare every wheel with --src")
    v.add_argument("--src", type=Path, default=ROOT / ".ray-wheels")
    sub.add_parser("stash", help="copy the carried sets to /tmp/cmidd-ray-parts (device call 1)")
    j = sub.add_parser("install", help="join, verify and pip install into --target (device call 2)")
    j.add_argument("--target", type=Path, default=Path("/tmp/cmidd-ray-site"))
    args = ap.parse_args(argv)
    roots = [PARTS, STASH]
    if args.cmd == "split":
        m = split(args.src, args.out, args.max_mib)
        print(f"ray_parts: {len(m['wheels'])} wheels, {m['tar_bytes'] / 2**20:.1f} MiB -> "
              + ", ".join(f"{args.out.name}/{p['set']}/{p['name']} {p['bytes'] / 2**20:.1f} MiB" for p in m["parts"]))
    elif args.cmd == "verify":
        with tempfile.TemporaryDirectory() as tmp:
            m = join([PARTS], Path(tmp))
            src = {p.name: sha256(p.read_bytes()) for p in args.src.glob("*.whl")}
            if src != m["wheels"]:
                raise SystemExit("ray_parts: the joined wheels differ from --src's")
        print(f"ray_parts: round trip ok: {len(m['wheels'])} wheels, sha256 equal ({m['tar_sha256'][:16]})")
    elif args.cmd == "stash":
        sets = sorted(p for p in PARTS.glob("*") if p.is_dir())
        for folder in sets:
            shutil.copytree(folder, STASH / folder.name, dirs_exist_ok=True)
        print(f"ray_parts: stashed {', '.join(p.name for p in sets) or 'nothing'} in {STASH}")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            m = join(roots, Path(tmp))
            wheels = [str(Path(tmp) / n) for n in m["wheels"]]
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--upgrade", "--target", str(args.target), *wheels], check=True)
        print(f"ray_parts: installed {len(m['wheels'])} wheels into {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Two steps of ``tools/gpu_run.py`` (issue 37): gradient matching batched vs the per-class loop, and Ray Train.

* ``gm``: seconds per image update of DC (no DSA) and DSA at MNIST size (28x28x1, ConvNet-3, IPC 10, 256 real
  images per class) with ``method.gm_impl: loop`` (the reference's per-class loop) and ``batched`` (every class in
  one vmap pass), in one process on one device; host syncs inside one matching loss + backward of each (CUDA).
* ``ray``: a distill job through Ray Train (``cmidd.ray.train.distill_distributed``) with 1 worker and
  ``scaling.use_gpu`` on the GPU machine (ray joined from the carried parts: ``tools/ray_parts.py``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any


def save(work: Path, step: str, result: dict[str, Any]) -> None:
    """A step's results so far (strict JSON: non-finite numbers become null); atomic, so a kill never tears it."""
    from cmidd.curves import strict

    tmp = work / f"{step}.json.tmp"
    tmp.write_text(json.dumps(strict(result), indent=1, default=str))
    tmp.replace(work / f"{step}.json")


def matching_syncs(device, impl: str, dsa: bool, images: str, ipc: int) -> int:
    """Host syncs (torch.cuda sync debug warnings) in one matching loss + its backward, after one warm-up."""
    import torch

    from cmidd.bench.speed import Setting, speed_data, speed_job
    from cmidd.config import parse_job
    from cmidd.data import RealPool
    from cmidd.methods import MethodContext, build_method

    s = Setting("gm", False, ipc, images, gm_impl=impl)
    job = parse_job(speed_job(s, 1, device.type), "gpu_run gm syncs")
    job = job.model_copy(update={"method": job.method.model_copy(update={"dsa": dsa})})
    data = speed_data(images, 256)
    pool = RealPool(data.train_x, data.train_y, data.num_classes, device)
    m = build_method(MethodContext(job.method, job.net, pool, data.channels, data.num_classes, data.im_size, device))
    x0, y = pool.random_init(ipc, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    m.begin_iteration(gen)
    for counting in (False, True):
        x = x0.clone().requires_grad_(True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if counting:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                m.loss(x, y, gen).backward()
            finally:
                torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def step_gm(sz, work: Path, until: float, args: argparse.Namespace) -> None:
    import torch

    import cmidd.bench.speed as bs
    from cmidd.config import parse_job
    from cmidd.distill import distill
    from cmidd.hooks import StepClock

    device = torch.device(sz.device)
    data = bs.speed_data(sz.gm_images, 256)
    result: dict[str, Any] = {"images": sz.gm_images, "ipc": sz.ipc, "repeats": sz.speed_repeats, "rows": [],
                              "syncs": {}}
    for name, dsa in (("dc", False), ("dsa", True)):
        for impl in ("loop", "batched"):
            if time.time() > until - 5:
                result["note"] = "box reached before every row ran"
                save(work, "gm", result)
                return
            s = bs.Setting("gm", False, sz.ipc, sz.gm_images, gm_impl=impl)
            raw = bs.speed_job(s, 2 + sz.speed_repeats, device.type)
            raw["method"]["dsa"] = dsa
            clock = StepClock(start=True)
            distill(parse_job(raw, f"gpu_run gm {name}"), data, None, clock)
            per = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])][2:]
            result["net"] = raw["net"]["name"]
            row = {"variant": name, "impl": impl, "s_per_update": bs.stats(per) if per else None}
            result["rows"].append(row)
            print(f"[gm] {name} {impl}: {row['s_per_update']['median'] if per else float('nan'):.4f} s per image "
                  f"update", flush=True)
            save(work, "gm", result)
    if device.type == "cuda":
        for impl in ("loop", "batched"):
            result["syncs"][impl] = matching_syncs(device, impl, True, sz.gm_images, sz.ipc)
            print(f"[gm] host syncs in one DSA matching loss + backward, {impl}: {result['syncs'][impl]}", flush=True)
    else:
        result["syncs"] = {"note": "n/a on cpu (torch counts syncs on CUDA only)"}
    save(work, "gm", result)


def step_ray(sz, work: Path, until: float, args: argparse.Namespace) -> None:
    result: dict[str, Any] = {}
    try:
        import ray
    except ImportError as e:
        save(work, "ray", {"skipped": f"ray is not installed ({e}): carry .ray-parts (tools/ray_parts.py)"})
        return
    from cmidd.config import parse_job
    from cmidd.data import load_dataset
    from cmidd.ray import connect, disconnect
    from cmidd.ray.train import distill_distributed

    use_gpu = sz.device == "cuda"
    data = load_dataset("digits")
    job = parse_job({"kind": "distill", "name": "gpu-run-ray", "seed": 0, "device": sz.device, "ipc": 10,
                     "data": {"name": "digits"}, "net": {"name": "ConvNetD2"},
                     "method": {"name": "dm", "iterations": sz.ray_iterations, "batch_real": 64},
                     "cmi": {"lam": 0.0}, "eval": {"archs": ["ConvNetD2"], "num_eval": 1, "epochs": 2},
                     "scaling": {"workers": 1, "use_gpu": use_gpu, "cpus_per_worker": 1},
                     "output": {"dir": str(work / "ray-job"), "checkpoint_every": 0}}, "gpu_run ray")
    t = time.time()
    connect("local", num_cpus=4, include_dashboard=False)
    try:
        result.update(ray=ray.__version__, cluster=dict(ray.cluster_resources()), use_gpu=use_gpu,
                      start_s=time.time() - t)
        save(work, "ray", result)
        t = time.time()
        synset, history = distill_distributed(job, data, workdir=work / "ray")
        result.update(seconds=time.time() - t, steps=len(history.step), loss_first=history.loss_dd[0],
                      loss_last=history.loss_dd[-1], sha256=synset.sha256(), workers=1)
    finally:
        disconnect()
    print(f"[ray] Ray Train, 1 worker, use_gpu={use_gpu}: {result['steps']} steps in {result['seconds']:.1f} s, "
          f"loss {result['loss_first']:.3f} -> {result['loss_last']:.3f}", flush=True)
    save(work, "ray", result)


def gm_lines(g: dict[str, Any]) -> list[str]:
    """The gm step's section of ``gpu_run.md``."""
    if not g.get("rows"):
        return []
    lines = ["", f"## 3. Gradient matching: per-class loop vs batched ({g['images']}, IPC {g['ipc']}, {g.get('net')}, "
             f"median of {g['repeats']} image updates after 2)", "",
             "| method | loop s/update | batched s/update | loop / batched |", "|---|---:|---:|---:|"]
    by = {(r["variant"], r["impl"]): (r["s_per_update"] or {}).get("median") for r in g["rows"]}
    for v in ("dc", "dsa"):
        lo, ba = by.get((v, "loop")), by.get((v, "batched"))
        ratio = f"{lo / ba:.2f}" if lo and ba else "-"
        lines.append(f"| {v} | {lo if lo is None else f'{lo:.4f}'} | {ba if ba is None else f'{ba:.4f}'} | {ratio} |")
    lines += ["", f"Host syncs in one DSA matching loss + backward: `{g.get('syncs')}`."]
    return lines


def ray_lines(r: dict[str, Any]) -> list[str]:
    """The ray step's section of ``gpu_run.md``."""
    if r.get("skipped"):
        return ["", f"## 4. Ray Train: skipped ({r['skipped']})"]
    if "steps" not in r:
        return ["", "## 4. Ray Train: did not finish (see gpu_run.log)"] if r else []
    return ["", f"## 4. Ray Train, 1 worker, use_gpu={r['use_gpu']} (ray {r['ray']})", "",
            f"Cluster {r['cluster']}; Ray started in {r['start_s']:.1f} s; {r['steps']} DM steps (digits, IPC 10) in "
            f"{r['seconds']:.1f} s, loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}, set sha256 "
            f"{r['sha256'][:16]}."]


def faster_gm_impl(work: Path) -> tuple[str, str]:
    """``method.gm_impl`` for the reproduce rows: the faster of loop and batched in the gm step's DSA (else DC) rows,
    or ``auto`` when the gm step left no pair."""
    import json

    path = work / "gm.json"
    rows = json.loads(path.read_text()).get("rows", []) if path.is_file() else []
    by = {(r["variant"], r["impl"]): (r.get("s_per_update") or {}).get("median") for r in rows}
    for v in ("dsa", "dc"):
        lo, ba = by.get((v, "loop")), by.get((v, "batched"))
        if lo and ba:
            return ("batched" if ba <= lo else "loop"), f"gm step, {v}: loop {lo:.4f} vs batched {ba:.4f} s/update"
    return "auto", "no loop/batched pair from the gm step"

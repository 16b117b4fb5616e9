"""GPU readiness check: every method, both evaluation modes and the speed settings on one device.

Run it on a machine with a CUDA GPU (``make gpu-check``, or ``tools/gpu_check.sh``), or as a dry run on the
CPU at toy sizes (``--device cpu``, under a minute), which CI runs so the script cannot rot::

    PYTHONPATH=platform python tools/gpu_check.py --device cpu --out runs/gpu-check-cpu

It writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out`` (default ``$OUT``, else runs/gpu-check) and
exits 1 with one clear line when a check fails (a tensor on the wrong device, a non-finite loss, an error).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cmidd.bench.speed import Setting, fake_experts, make_proxies, speed_data, speed_job, time_loop
from cmidd.config import EvalCfg, parse_job, set_path
from cmidd.distill import Hooks, distill
from cmidd.evaluate import evaluate

METHODS = ("dm", "gm", "idc", "mtt")


class CheckFailed(RuntimeError):
    """A check of this script failed; the message is the one line the user sees."""


# ops that only move, view or draw data: on the host they are a cost to know (listed), not a wrong device
MOVES = ("_to_copy", "copy_", "clone", "detach", "alias", "lift_fresh", "view", "_unsafe_view", "reshape", "select",
         "slice", "index", "unbind", "split", "t.", "permute", "expand", "unsqueeze", "squeeze", "stack", "cat",
         "rand", "randn", "randperm", "randint", "uniform_", "normal_", "bernoulli", "empty", "arange", "zeros",
         "ones", "full", "fill_")


class DeviceAudit(TorchDispatchMode):
    """Counts the outputs of every aten op by device; large host *compute* on a cuda run is a device mismatch.

    The loop draws its random numbers from CPU generators (exact resume), so small CPU tensors are expected. A CPU
    output of more than ``limit`` elements from a compute op (conv, matmul, ...) means work meant for the device
    ran on the host (``bad``: the check fails); a large host copy or view (MTT's experts, say) is only listed
    (``host_moves``).
    """

    def __init__(self, device: torch.device, limit: int = 65536) -> None:
        super().__init__()
        self.device, self.limit = device, limit
        self.by_device: dict[str, int] = {}
        self.bad: list[str] = []
        self.host_moves: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.by_device[t.device.type] = self.by_device.get(t.device.type, 0) + 1
                if t.device.type != self.device.type and t.numel() > self.limit:
                    name = str(func).removeprefix("aten.")
                    if name.split(".")[0] in {m.rstrip(".") for m in MOVES}:
                        self.host_moves[name] = self.host_moves.get(name, 0) + 1
                    elif len(self.bad) < 5:
                        self.bad.append(f"{func} -> {tuple(t.shape)} on {t.device}")
        return out


def sizes(device: torch.device) -> dict[str, Any]:
    """Toy sizes on the CPU (the dry run), the speed suite's on cuda."""
    if device.type == "cuda":
        return {"images": "cifar32", "ipc": 10, "iterations": 5, "speed_ipcs": (10, 50), "warmup": 2, "repeats": 5,
                "eval_archs": ["ConvNet"], "eval_epochs": 50, "eval_seeds": 5}
    return {"images": "digits8", "ipc": 2, "iterations": 1, "speed_ipcs": (2,), "warmup": 0, "repeats": 1,
            "eval_archs": ["ConvNetD1"], "eval_epochs": 2, "eval_seeds": 2}


def job_for(method: str, cmi: bool, ipc: int, images: str, iterations: int, device: torch.device):
    """The speed suite's job of this setting (cmidd/jobs/bench/speed.yaml); at toy size 32 real images per class."""
    raw = set_path(speed_job(Setting(method, cmi, ipc, images), iterations, device.type), "name", "gpu-check")
    if images != "cifar32":
        raw = set_path(raw, "method.batch_real", 32)
    return parse_job(raw, f"gpu-check:{method}{'+cmi' if cmi else ''}")


def check_on(device: torch.device, what: str, tensors) -> None:
    for name, t in tensors:
        if t.device.type != device.type:
            raise CheckFailed(f"{what}: {name} is on {t.device}, expected {device}")


def run_methods(device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    """Each method with and without CMI for a few iterations, under the device audit."""
    data = speed_data(sz["images"], 256)
    rows = []
    for method in METHODS:
        for cmi in (False, True):
            job = job_for(method, cmi, sz["ipc"], sz["images"], sz["iterations"], device)
            proxies = make_proxies(data, device) if cmi else None
            experts = fake_experts(job, data) if method == "mtt" else None
            audit = DeviceAudit(device)
            t = time.perf_counter()
            with audit:
                synset, history = distill(job, data, proxies, Hooks(), experts=experts)
            sync(device)
            seconds = time.perf_counter() - t
            key = f"{method}{'+cmi' if cmi else ''}"
            if audit.bad:
                raise CheckFailed(f"{key}: work ran off {device}: {'; '.join(audit.bad)}")
            for p in proxies or []:
                check_on(device, f"{key} proxy", p.named_parameters())
            finite = bool(torch.isfinite(synset.images).all()) and all(map(math.isfinite, history.loss_total))
            if not finite:
                raise CheckFailed(f"{key}: a loss or the synthetic images are not finite")
            if len(history.step) != sz["iterations"]:
                raise CheckFailed(f"{key}: ran {len(history.step)} iterations, expected {sz['iterations']}")
            rows.append({"run": key, "seconds": seconds, "s_per_iter": seconds / sz["iterations"],
                         "ops_by_device": audit.by_device, "host_moves": audit.host_moves,
                         "images": list(synset.images.shape),
                         "dtype": str(synset.images.dtype), "loss_total": history.loss_total[-1]})
            print(f"[methods] {key}: {seconds:.2f} s ({sz['iterations']} it), ops {audit.by_device}", flush=True)
    return rows


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_eval(device: torch.device, sz: dict[str, Any]) -> dict[str, Any]:
    """One evaluation of a random-real set, ``eval.batched`` vmap against loop, side by side."""
    data = speed_data(sz["images"], 256)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train_y), generator=gen)[: 10 * sz["ipc"]]
    x, y = data.train_x[idx], data.train_y[idx]
    out: dict[str, Any] = {"archs": sz["eval_archs"], "epochs": sz["eval_epochs"], "seeds": sz["eval_seeds"]}
    for mode in ("loop", "vmap", "loop", "vmap"):  # twice each, the second timing kept (warm caches)
        cfg = EvalCfg(archs=sz["eval_archs"], epochs=sz["eval_epochs"], num_eval=sz["eval_seeds"], batched=mode,
                      ensemble=False)
        t = time.perf_counter()
        res = evaluate(x, y, data, cfg, 0, device)
        sync(device)
        out[f"{mode}_s"] = time.perf_counter() - t
        out[f"{mode}_acc"] = res.metrics().get(f"acc/{sz['eval_archs'][0]}")
    out["loop_over_vmap"] = out["loop_s"] / out["vmap_s"]
    print(f"[eval] loop {out['loop_s']:.2f} s, vmap {out['vmap_s']:.2f} s, ratio {out['loop_over_vmap']:.2f}",
          flush=True)
    return out


VARIANTS = {
    "plain": lambda device: contextlib.nullcontext(),
    # cmidd has no precision setting: the whole distill call runs inside autocast (nets and CMI in bf16)
    "bf16-autocast": lambda device: torch.autocast(device.type, dtype=torch.bfloat16),
}


def run_speed(device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    """DM and DM+CMI (ResNet18 proxy at 32x32) per IPC, plain and bf16 autocast; s/iter of the real loop."""
    data = speed_data(sz["images"], 256)
    rows = []
    for ipc in sz["speed_ipcs"]:
        for cmi in (False, True):
            for name, ctx in VARIANTS.items():
                s = Setting("dm", cmi, ipc, sz["images"])
                with ctx(device):
                    row = time_loop(s, data, sz["warmup"], sz["repeats"], device)
                row["variant"] = name
                rows.append(row)
                print(f"[speed] {s.key} {name}: {row['s_per_iter']['median']:.4f} s/it", flush=True)
    return rows


class _Syncs(Hooks):
    """Marks, at each step, how many sync warnings were recorded so far (setup syncs stay out of the count)."""

    def __init__(self, caught: list) -> None:
        self.caught, self.marks = caught, []

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.marks.append(sum("synchroniz" in str(w.message) for w in self.caught))


def count_syncs(device: torch.device, sz: dict[str, Any]) -> dict[str, Any]:
    """Host-device synchronizations per iteration of DM and DM+CMI (torch.cuda.set_sync_debug_mode "warn").

    The count between consecutive steps (after the first) is the steady-state figure; it includes the loop's
    read-back of each loss as a Python float.
    """
    if device.type != "cuda":
        return {"note": "n/a on cpu (torch counts syncs on CUDA only)"}
    data = speed_data(sz["images"], 256)
    out: dict[str, Any] = {}
    for cmi in (False, True):
        iters = 6
        job = job_for("dm", cmi, sz["ipc"], sz["images"], iters, device)
        proxies = make_proxies(data, device) if cmi else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hooks = _Syncs(caught)
            torch.cuda.set_sync_debug_mode("warn")
            try:
                distill(job, data, proxies, hooks)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        per_iter = [b - a for a, b in zip(hooks.marks, hooks.marks[1:])]
        out["dm+cmi" if cmi else "dm"] = {"per_iter": per_iter, "total": hooks.marks[-1] if hooks.marks else 0,
                                          "iterations": iters}
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# cmidd GPU check ({report['device']}, {report['device_name']})", "",
             f"torch {report['torch']}, python {report['python']}, {report['seconds']:.1f} s, "
             f"status **{report['status']}**", "", "## Methods (a few iterations each)", "",
             "| run | seconds (whole call, setup included) | aten ops by device | large host copies |",
             "|---|---:|---|---|"]
    lines += [f"| {r['run']} | {r['seconds']:.2f} | {r['ops_by_device']} | {r.get('host_moves') or '-'} |"
              for r in report.get("methods", [])]
    ev = report.get("eval")
    if ev:
        lines += ["", "## Evaluation", "", f"{ev['seeds']} seeds of {ev['archs'][0]}, {ev['epochs']} epochs: "
                  f"loop {ev['loop_s']:.2f} s, vmap {ev['vmap_s']:.2f} s, loop/vmap **{ev['loop_over_vmap']:.2f}x**"]
    lines += ["", "## Speed (DM, DM+CMI; seconds per iteration, median)", "",
              "| setting | variant | median | min | max |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['setting']} | {r['variant']} | {r['s_per_iter']['median']:.4f} | {r['s_per_iter']['min']:.4f} "
              f"| {r['s_per_iter']['max']:.4f} |" for r in report.get("speed", [])]
    lines += ["", "channels_last: DM always runs its net in channels_last (methods/dm.py), so it is no separate "
              "variant.", "", "## Host syncs", "", f"`{json.dumps(report.get('syncs'))}`"]
    if report.get("error"):
        lines += ["", f"**FAILED**: {report['error']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/gpu-check"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda: no CUDA GPU is available (use --device cpu for the dry run)", file=sys.stderr)
        return 1
    sz = sizes(device)
    report: dict[str, Any] = {
        "device": device.type, "torch": torch.__version__, "python": sys.version.split()[0],
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "sizes": sz}
    t0 = time.perf_counter()
    steps = [("methods", run_methods), ("eval", run_eval), ("speed", run_speed), ("syncs", count_syncs)]
    try:
        for name, fn in steps:
            report[name] = fn(device, sz)
        report["status"] = "ok"
    except Exception as e:  # report what ran so far, then fail loudly
        report["status"], report["error"] = "failed", f"{type(e).__name__}: {e}"
    report["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"report: {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}")
    if report["status"] != "ok":
        print(f"gpu_check: FAILED: {report['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The speed suite of ``cmidd bench``: seconds per distillation iteration, measured inside the real loop.

Each setting (method, CMI on/off, IPC, image kind) runs ``distill`` for ``warmup + repeats`` iterations; a
hook stamps the clock after every iteration and the first ``warmup`` intervals are dropped. Besides the
loop's time, DM settings measure the *bare* time: the same networks' forward and backward passes on the
same batch sizes with nothing else (no sampling, augmentation, optimizer or bookkeeping) - the practical
limit of this design. Peak memory is the process's peak resident set during the setting (CPU) or
``torch.cuda.max_memory_allocated`` (CUDA).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..cmi import cmi_emp, freeze, proxy_log_probs
from ..config import JOBS_DIR, load_raw, parse_job
from ..data import Dataset, load_dataset
from ..distill import distill
from ..hooks import StepClock
from ..experts import flat_params
from ..chunks import apply_chunked, embed_nograd
from ..methods.dm import dm_loss
from ..nets import create_net
from ..training import seeded_net
from ..lam import CMI_SUFFIX
from ._common import random_dataset, stats

if TYPE_CHECKING:
    from . import BenchPlan

log = logging.getLogger(__name__)

# The DD defaults for 32x32 colour images (the paper's CIFAR settings): ConvNetD3, width 128, instance norm.
NET_32 = "ConvNet"
PROXY_32 = "ResNet18"  # the paper's proxy
CLASSES = 10


# Per-method settings of a speed iteration. gm / idc: one image update (an iteration of DC is outer_loop of
# them, plus inner_loop net steps between); idc: multi-formation factor 2 as IDC; mtt: 10 unrolled student
# steps on at most 100 images (MTT's CIFAR-10 IPC 10 uses 30 steps on 100).
SPEED_FIELDS: dict[str, dict[str, Any]] = {
    "gm": {"outer_loop": 1, "inner_loop": 0},
    "idc": {"outer_loop": 1, "inner_loop": 0, "factor": 2, "batch_real": 64},
    "mtt": {"syn_steps": 10, "batch_syn": 100, "expert_epochs": 2, "max_start_epoch": 0},
}


@dataclass(frozen=True)
class Setting:
    """One speed measurement: ``method`` in dm | gm, CMI on/off, IPC, image kind (``cifar32`` | ``digits8``)."""

    method: str
    cmi: bool
    ipc: int
    images: str
    cmi_every: int = 1  # cmi.every: apply CMI on every k-th image update (a fidelity-for-time trade)
    cmi_precision: str = "fp32"  # cmi.precision: fp32 | bf16 (the proxy under bfloat16 autocast)
    dd_precision: str = "fp32"  # method.precision: fp32 | bf16 (the DD net under bfloat16 autocast; dm only)
    gm_impl: str = "auto"  # method.gm_impl (gm / idc): auto | batched (one vmap pass) | loop (the reference's)

    @property
    def key(self) -> str:
        opts = []
        if self.cmi_every > 1:
            opts.append(f"every{self.cmi_every}")
        if self.cmi_precision == "bf16":
            opts.append("bf16")
        cmi = (CMI_SUFFIX + (f"({','.join(opts)})" if opts else "")) if self.cmi else ""
        dd = "(bf16)" if self.dd_precision == "bf16" else "" if self.gm_impl == "auto" else f"({self.gm_impl})"
        return f"{self.method}{dd}{cmi}/ipc{self.ipc}/{self.images}"


def speed_data(images: str, batch_real: int) -> Dataset:
    """``cifar32``: CIFAR-shaped random tensors (speed does not depend on pixel values); ``mnist28``: MNIST-shaped
    ones (28x28x1); ``digits8``: digits."""
    if images == "digits8":
        return load_dataset("digits")
    if images == "mnist28":
        return random_dataset(CLASSES, batch_real + 16, 28, 1, seed=0, name="random28", test_per_class=1)
    return random_dataset(CLASSES, batch_real + 16, 32, 3, seed=0, name="random32", test_per_class=1)


def speed_job(s: Setting, iterations: int, device: str) -> dict[str, Any]:
    """The raw distill job that times setting ``s`` for ``iterations`` on ``device`` (the shared harness calls it)."""
    fields: dict[str, Any] = {"device": device, "ipc": s.ipc, "method.name": s.method, "method.iterations": iterations,
                              "cmi.lam": 1.0 if s.cmi else 0.0, "cmi.every": s.cmi_every,
                              "cmi.precision": s.cmi_precision}
    if s.images == "mnist28":  # the DD literature's MNIST row: ConvNet-3 w128, no flip (cmidd/jobs/bench/reproduce.yaml)
        fields["method.dsa_strategy"] = "color_crop_cutout_scale_rotate"
    elif s.images != "cifar32":  # 8x8 digits: the demo's net, fewer real images, the DSA that keeps digits legible
        fields.update({"net.name": "ConvNetD2", "method.batch_real": 64, "method.dsa_strategy": "crop_scale_rotate"})
    fields.update({f"method.{k}": v for k, v in SPEED_FIELDS.get(s.method, {}).items()})
    if s.dd_precision != "fp32":
        fields["method.precision"] = s.dd_precision
    if s.method in ("gm", "idc"):
        fields["method.gm_impl"] = s.gm_impl
    return load_raw(JOBS_DIR / "bench" / "speed.yaml", fields)


class PeakMemory:
    """Peak resident memory (MiB) while the block runs: /proc/self/statm sampled every 5 ms, or CUDA's peak."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb, self._stop = device, 0.0, threading.Event()

    @staticmethod
    def _rss_mb() -> float:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # lifetime peak: an upper bound
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_mb = self._rss_mb()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()


def make_proxies(data: Dataset, device: torch.device) -> list[torch.nn.Module]:
    """One randomly initialized proxy (weights do not change the cost); the paper's ResNet18 at 32x32."""
    arch = PROXY_32 if data.im_size == 32 else "ConvNetD2"
    return [seeded_net(lambda: create_net(arch, data.channels, data.num_classes, data.im_size), 0, device)]


def fake_experts(job, data: Dataset) -> list[torch.Tensor]:
    """A trajectory of the job's net (its initialization plus drift): the cost of MTT does not depend on it."""
    net = seeded_net(lambda: create_net(job.net.name, data.channels, data.num_classes, data.im_size,
                                        **job.net.kwargs()), 0, "cpu")
    start = flat_params(net)
    drift = torch.randn(start.shape, generator=torch.Generator().manual_seed(1))
    return [torch.stack([start + 0.01 * e * drift for e in range(job.method.expert_epochs + 1)])]


def time_loop(s: Setting, data: Dataset, warmup: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """Seconds per iteration of the real loop, and the peak memory during it.

    With ``cmi_every`` k > 1 one in k iterations pays for CMI, so each repeat is a block of k consecutive
    iterations (holding exactly one CMI application) and the figure is the block's mean.
    """
    k = s.cmi_every
    job = parse_job(speed_job(s, warmup + repeats * k, device.type), f"bench:{s.key}")
    proxies = make_proxies(data, device) if s.cmi else None
    experts = fake_experts(job, data) if s.method == "mtt" else None
    clock = StepClock(start=True)
    with PeakMemory(device) as mem:
        distill(job, data, proxies, clock, experts=experts)
    per_it = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])][warmup:]
    per_it = [sum(per_it[i : i + k]) / k for i in range(0, len(per_it), k)]
    return {"setting": s.key, "method": s.method, "cmi": s.cmi, "ipc": s.ipc, "images": s.images,
            "im_size": data.im_size, "proxy": (PROXY_32 if data.im_size == 32 else "ConvNetD2") if s.cmi else None,
            "cmi_every": s.cmi_every, "cmi_precision": s.cmi_precision, "dd_precision": s.dd_precision,
            "gm_impl": s.gm_impl if s.method in ("gm", "idc") else None,
            "s_per_iter": stats(per_it), "peak_mem_mb": mem.peak_mb,
            "unit": "s per image update" if s.method in ("gm", "idc") else "s per iteration"}


def time_bare(s: Setting, data: Dataset, warmup: int, repeats: int, device: torch.device) -> dict[str, float]:
    """DM only: the networks' forward/backward on the same batch sizes, with nothing else around them."""
    job = parse_job(speed_job(s, 1, device.type), "bench:bare")
    gen = torch.Generator().manual_seed(0)
    n_real = job.method.batch_real
    real = torch.randn(CLASSES * n_real, data.channels, data.im_size, data.im_size, generator=gen).to(device)
    real_y = torch.arange(CLASSES, device=device).repeat_interleave(n_real)
    syn = torch.randn(CLASSES * s.ipc, data.channels, data.im_size, data.im_size, generator=gen).to(device)
    syn = syn.requires_grad_(True)
    syn_y = torch.arange(CLASSES, device=device).repeat_interleave(s.ipc)
    net = create_net(job.net.name, data.channels, CLASSES, data.im_size, **job.net.kwargs()).to(device)
    net.requires_grad_(False)
    proxy = freeze(make_proxies(data, device)[0]) if s.cmi else None

    def step() -> None:
        loss = dm_loss(embed_nograd(net, real), real_y, apply_chunked(net.embed, syn), syn_y, CLASSES)
        if proxy is not None:
            loss = loss + cmi_emp(proxy_log_probs(proxy, syn, "features", 1.0), syn_y, CLASSES)
        loss.backward()
        syn.grad = None

    times = []
    for i in range(warmup + repeats):
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return stats(times)


def run_speed(settings: list[Setting], warmup: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """All settings, one after the other in this process; returns ``{"settings": [...], summary keys}``."""
    rows, datasets = [], {}
    for i, s in enumerate(settings, 1):
        if s.images not in datasets:
            datasets[s.images] = speed_data(s.images, 256)
        data = datasets[s.images]
        row = time_loop(s, data, warmup, repeats, device)
        if s.method == "dm" and s.cmi_every == 1 and s.cmi_precision == "fp32":
            row["bare_s"] = time_bare(s, data, warmup, repeats, device)
            row["loop_over_bare"] = row["s_per_iter"]["median"] / row["bare_s"]["median"]
        log.info("[speed %d/%d] %s: %.3f s/it (min %.3f, max %.3f)", i, len(settings), s.key,
                 row["s_per_iter"]["median"], row["s_per_iter"]["min"], row["s_per_iter"]["max"])
        rows.append(row)
    return {"settings": rows, **summarize(rows)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The headline ratios: CMI overhead and loop/bare at IPC 10 on 32x32 (when those settings ran)."""
    by = {r["setting"]: r for r in rows}
    out: dict[str, float] = {}
    dm, dmc = by.get("dm/ipc10/cifar32"), by.get("dm+cmi/ipc10/cifar32")
    if dm and dmc:
        out["cmi_overhead_ipc10_32px"] = dmc["s_per_iter"]["median"] / dm["s_per_iter"]["median"] - 1
    for r in rows:
        if dm and r["setting"].startswith("dm+cmi(every") and r["setting"].endswith("/ipc10/cifar32"):
            every = r["setting"].split("(every")[1].split(")")[0]
            out[f"cmi_overhead_every{every}_ipc10_32px"] = r["s_per_iter"]["median"] / dm["s_per_iter"]["median"] - 1
    bf16 = by.get("dm+cmi(bf16)/ipc10/cifar32")
    if dm and bf16:
        out["cmi_overhead_bf16_ipc10_32px"] = bf16["s_per_iter"]["median"] / dm["s_per_iter"]["median"] - 1
    if dmc:
        out["loop_over_bare_ipc10_32px"] = dmc["loop_over_bare"]
        out["dmcmi_s_per_iter_ipc10_32px"] = dmc["s_per_iter"]["median"]
    if "dm+cmi/ipc50/cifar32" in by:
        out["dmcmi_s_per_iter_ipc50_32px"] = by["dm+cmi/ipc50/cifar32"]["s_per_iter"]["median"]
    for key, r in by.items():  # gradient matching: the reference's per-class loop over the batched pass
        method, _, rest = key.partition("/")
        batched = method.replace("(loop)", "(batched)") + "/" + rest
        if "(loop)" in method and batched in by:
            out[f"{method.replace('(loop)', '')}_loop_over_batched/{rest}"] = (
                r["s_per_iter"]["median"] / by[batched]["s_per_iter"]["median"])
    return out


# (summary key, bound, label): the speed targets, reported whether met or missed (all "<=").
SPEED_TARGETS = [
    ("dmcmi_s_per_iter_ipc10_32px", 3.8, "DM+CMI s/iter, IPC 10, 32x32, ResNet18 proxy (fp32, paper math)"),
    ("dmcmi_s_per_iter_ipc10_32px", 2.7, "DM+CMI s/iter, IPC 10, 32x32, with the fast defaults"),
    ("dmcmi_s_per_iter_ipc50_32px", 12.0, "DM+CMI s/iter, IPC 50, 32x32, ResNet18 proxy"),
    ("cmi_overhead_ipc10_32px", 0.15, "CMI overhead on DM, IPC 10, 32x32 (ResNet18 proxy)"),
    ("loop_over_bare_ipc10_32px", 1.25, "loop time / bare forward+backward, DM+CMI IPC 10, 32x32"),
]


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every speed target the summary has a figure for: ``{"target", "value", "bound", "met"}``."""
    return [{"target": label, "value": result[key], "bound": f"<= {bound}", "met": result[key] <= bound}
            for key, bound, label in SPEED_TARGETS if key in result]


def suite(plan: BenchPlan, device: torch.device, out: Path) -> dict[str, Any]:
    """The ``speed`` suite of ``cmidd bench``: ``plan.settings()`` timed one after the other."""
    return run_speed(plan.settings(), plan.warmup, plan.repeats, device)

"""``cmidd bench``: the benchmark protocol of DESIGN.md, measured in one run on one machine.

Suites (a registry; ``all`` runs every available one):

- ``speed``: seconds per iteration of DM, DM+CMI, GM (DSA), GM+CMI at several IPCs on CIFAR-shaped 32x32x3
  inputs and on 8x8 digits; CMI overhead; loop time over bare forward/backward time; peak memory.
- ``quality``: digits, random-real vs DM vs DM+CMI (...) per IPC, mean +- std over seeds, cross-architecture
  mean, the full-data ceiling and the CMI of every set.
- ``reproduce`` (``bench_reproduce``; not in ``all``): DC/DSA/DM/IDC/MTT (+CMI) on mnist5k vs the papers.
- ``ray``, ``search``, ``ensemble``: Ray Train 1 / 2 workers vs the plain loop, TPE+ASHA vs grid, batched vs
  sequential ensemble training - each from its own module, when that module is installed.

Writes ``OUT/bench.json`` (schema below), ``OUT/bench.md`` and PNG plots; ``bench.json``::

    {"env": {...}, "plan": {...}, "speed": {"settings": [{"setting", "s_per_iter": {median, min, max, n},
     "peak_mem_mb", ...}], "cmi_overhead_ipc10_32px", "loop_over_bare_ipc10_32px", ...},
     "quality": {"rows": [...], "cmi": {...}, "ceiling": {...}}, "targets": [{"target", "value", "bound", "met"}]}
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata as md
import json
import logging
import math
import os
import re
import platform as std_platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .bench_quality import parse_variant, quality_targets, run_quality
from .bench_report import markdown, plots
from .bench_speed import Setting, run_speed
from .demo import ARCHS, LAM
from .distill import resolve_device
from .errors import ConfigError
from .registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of every suite. ``PLANS`` holds ``full`` and ``quick``; tests shrink them further."""

    warmup: int = 1
    repeats: int = 5
    speed_ipcs: tuple[int, ...] = (1, 10, 50)
    speed_methods: tuple[str, ...] = ("dm", "dm+cmi", "dm+cmi(every4)", "gm", "gm+cmi", "idc", "idc+cmi", "mtt",
                                      "mtt+cmi")
    speed_images: tuple[str, ...] = ("cifar32", "digits8")
    quality_ipcs: tuple[int, ...] = (1, 10, 50)
    quality_variants: tuple[str, ...] = ("dm", "dm+cmi", "dm+cmi(every4)")
    quality_seeds: int = 3
    quality_archs: tuple[str, ...] = tuple(ARCHS)
    quality_iterations: int = 300
    gm_iterations: int = 50
    eval_epochs: int = 300
    big_epochs: int = 100
    full_epochs: int = 100
    lam: float = LAM
    proxy_set: str = "convnet-x4"
    proxy_epochs: int = 20
    ray_iterations: int = 5  # steps per timed segment of the Ray suite (repeats segments per configuration)
    ensemble_epochs: int = 20  # epochs of the batched-vs-sequential ensemble training
    reproduce: str = "full"  # the bench_reproduce.REPRODUCE_PLANS entry

    def settings(self) -> list[Setting]:
        out = []
        for images in self.speed_images:
            for ipc in self.speed_ipcs:
                for m in self.speed_methods:
                    method, cmi, every = parse_variant(m)
                    if cmi and ipc == 1:
                        continue  # CMI is identically 0 at IPC 1 (cmidd turns it off)
                    if every > 1 and (images != "cifar32" or ipc != 10):
                        continue  # the every-k trade-off is shown at the headline setting only
                    out.append(Setting(method, cmi, ipc, images, every))
        return out


PLANS = {
    "full": BenchPlan(),
    "quick": BenchPlan(
        repeats=5, speed_ipcs=(10,), speed_methods=("dm", "dm+cmi", "dm+cmi(every4)", "gm"),
        quality_ipcs=(1, 10), quality_variants=("dm", "dm+cmi"), quality_archs=("ConvNetD2", "LeNet"),
        quality_iterations=100, eval_epochs=100, full_epochs=30, proxy_set="convnet-x1", proxy_epochs=10,
        ray_iterations=3, reproduce="quick",
    ),
}

ALL = ("speed", "quality", "ray", "search", "ensemble")  # the order of ``--suite all``
SUITES: Registry[Callable[[BenchPlan, torch.device, Path], dict[str, Any]]] = Registry("bench suite")


@SUITES.register("speed")
def _speed(plan: BenchPlan, device: torch.device, out: Path) -> dict[str, Any]:
    return run_speed(plan.settings(), plan.warmup, plan.repeats, device)


@SUITES.register("quality")
def _quality(plan: BenchPlan, device: torch.device, out: Path) -> dict[str, Any]:
    return run_quality(
        out / "quality", list(plan.quality_ipcs), list(plan.quality_variants), plan.quality_seeds,
        list(plan.quality_archs), plan.quality_iterations, plan.gm_iterations, plan.eval_epochs,
        plan.big_epochs, plan.full_epochs, plan.lam, plan.proxy_set, plan.proxy_epochs,
    )


@SUITES.register("ray")
def _ray(plan: BenchPlan, device: torch.device, out: Path) -> dict[str, Any]:
    """Ray Train with 1 and 2 workers against the plain loop: DM+CMI, IPC 10, 32x32 (``bench_ray``)."""
    try:
        from .bench_ray import ray_speed
    except ImportError as e:
        return {"unavailable": f"Ray is not installed ({e})"}
    r = ray_speed(repeats=plan.repeats, iterations=plan.ray_iterations, ipc=10, im_size=32, warmup=plan.warmup)
    over = r["ratios"]["ray_1w_over_plain"] - 1
    r["targets"] = [{"target": "Ray Train overhead, 1 worker vs the plain loop (DM+CMI, IPC 10, 32x32)",
                     "value": over, "bound": "<= 0.15", "met": over <= 0.15}]
    rows = [("plain loop", r["plain"])] + [(f"Ray Train, {k[4:-1]} worker(s)", v) for k, v in r.items()
                                           if k.startswith("ray_") and k.endswith("w")]
    r["table"] = "\n".join(
        [f"DM+CMI, IPC 10, 32x32, {r['settings']['proxies']} proxies (agg mean), seconds per iteration:", "",
         "| loop | median | min | max |", "|---|---:|---:|---:|"]
        + [f"| {name} | {v['median_s']:.3f} | {v['min_s']:.3f} | {v['max_s']:.3f} |" for name, v in rows]
        + ["", "Ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in r["ratios"].items())]
    )
    return r

@SUITES.register("reproduce")
def _reproduce(plan: BenchPlan, device: torch.device, out: Path) -> dict[str, Any]:
    """Ours vs published on MNIST (``bench_reproduce``); ``--quick`` runs its reduced budget."""
    from .bench_reproduce import REPRODUCE_PLANS, run_reproduce

    return run_reproduce(REPRODUCE_PLANS[plan.reproduce], out / "reproduce", device.type)


@SUITES.register("search")
def _search(plan: BenchPlan, device: torch.device, out: Path) -> dict[str, Any]:
    """TPE+ASHA against a lambda grid: best accuracy vs CPU-seconds (``bench_search``)."""
    try:
        from .bench_search import bench_suite
    except ImportError as e:
        return {"unavailable": f"Ray Tune / Optuna are not installed ({e})"}
    return bench_suite(plan, device, out)


@SUITES.register("ensemble")
def _ensemble(plan: BenchPlan, device: torch.device, out: Path) -> dict[str, Any]:
    """Training 5 seeds of ConvNet on a 100-image set, batched (torch.func vmap) vs one after another."""
    from .bench_ensemble import ensemble_speed

    r = ensemble_speed(seeds=5, n_images=100, epochs=plan.ensemble_epochs, repeats=max(1, plan.repeats // 2),
                       device=str(device))
    r["targets"] = [{"target": "ensemble training, 5 ConvNet seeds on 100 images: sequential / batched time",
                     "value": r["speedup"], "bound": ">= 2", "met": r["speedup"] >= 2}]
    r["table"] = (f"{r['seeds']} seeds of {r['arch']} on {r['n_images']} images ({r['im_size']}x{r['im_size']}), "
                  f"{r['epochs']} epochs, median of {r['repeats']}: batched ({r['mode']}) {r['batched_s']:.2f} s, "
                  f"sequential {r['sequential_s']:.2f} s, speed-up {r['speedup']:.2f}x; largest weight difference "
                  f"{r['max_abs_diff']:.1e}")
    return r


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    cpu = std_platform.processor() or std_platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": std_platform.python_version(),
        "torch": torch.__version__, "ray": version("ray"), "mlflow": version("mlflow"), "optuna": version("optuna"),
        "cmidd": version("cmidd"), "device": str(device), "threads": torch.get_num_threads(),
        "cpu": cpu, "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def run_bench(suites: list[str], plan: BenchPlan, device: str, out: str | Path) -> dict[str, Any]:
    """Run ``suites`` (or ``["all"]``) and write ``bench.json``, ``bench.md`` and plots under ``out``."""
    names = [n for n in ALL if n in SUITES.names()] if suites == ["all"] else suites
    for n in names:
        SUITES.get(n)  # unknown names fail before any work
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"env": environment(dev), "plan": _plan_json(plan), "seconds": {}}
    for n in names:
        t = time.perf_counter()
        log.info("== bench suite: %s", n)
        report[n] = SUITES.get(n)(plan, dev, out)
        report["seconds"][n] = time.perf_counter() - t
    report["targets"] = targets(report)
    report["plots"] = [p.name for p in plots(report, out)]
    report = finite_or_null(report)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str, allow_nan=False))
    (out / "bench.md").write_text(markdown(report))
    return report


def finite_or_null(o: Any) -> Any:
    """NaN/Inf -> None, recursively: bench.json stays strict JSON (a missing figure is null, not NaN)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite_or_null(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite_or_null(v) for v in o]
    return o


def _plan_json(plan: BenchPlan) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(plan).items()}


# (summary key in a suite, bound, comparison, label) - the targets, reported whether met or missed.
SPEED_TARGETS = [
    ("dmcmi_s_per_iter_ipc10_32px", 3.8, "<=", "DM+CMI s/iter, IPC 10, 32x32, ResNet18 proxy (fp32, paper math)"),
    ("dmcmi_s_per_iter_ipc10_32px", 2.7, "<=", "DM+CMI s/iter, IPC 10, 32x32, with the fast defaults"),
    ("dmcmi_s_per_iter_ipc50_32px", 12.0, "<=", "DM+CMI s/iter, IPC 50, 32x32, ResNet18 proxy"),
    ("cmi_overhead_ipc10_32px", 0.15, "<=", "CMI overhead on DM, IPC 10, 32x32 (ResNet18 proxy)"),
    ("loop_over_bare_ipc10_32px", 1.25, "<=", "loop time / bare forward+backward, DM+CMI IPC 10, 32x32"),
]


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target the report has figures for, with its value and whether it was met."""
    out = []
    speed = report.get("speed", {})
    for key, bound, op, label in SPEED_TARGETS:
        if key in speed:
            v = speed[key]
            out.append({"target": label, "value": v, "bound": f"{op} {bound}", "met": v <= bound})
    if "quality" in report:
        out += quality_targets(report["quality"])
    for suite in ("ray", "search", "ensemble"):
        out += report.get(suite, {}).get("targets", [])
    return out


def plan_for(quick: bool, repeats: int | None = None) -> BenchPlan:
    plan = PLANS["quick" if quick else "full"]
    if repeats is not None:
        if repeats < 1:
            raise ConfigError(f"--repeats: must be >= 1 (got {repeats})")
        plan = dataclasses.replace(plan, repeats=repeats)
    return plan


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's figures as MLflow metrics (names with only the characters MLflow accepts)."""
    out: dict[str, float] = {}
    for row in report.get("speed", {}).get("settings", []):
        out[f"speed/{row['setting']}/s_per_iter"] = row["s_per_iter"]["median"]
    for k, v in report.get("speed", {}).items():
        if isinstance(v, (int, float)):
            out[f"speed/{k}"] = v
    for row in report.get("quality", {}).get("rows", []):
        out[f"quality/ipc{row['ipc']}/{row['set']}/{row['arch']}"] = row["acc_mean"]
    clean = {re.sub(r"[^A-Za-z0-9_./ -]", "_", k): float(v) for k, v in out.items() if v is not None}
    return {k: v for k, v in clean.items() if math.isfinite(v)}

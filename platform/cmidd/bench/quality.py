"""The quality suite of ``cmidd bench``: accuracy of distilled sets on digits, the demo's protocol per IPC.

For each IPC: the random-real baseline, then every method variant (``dm``, ``dm+cmi``, ``gm``, ``gm+cmi``,
``dm+cmi(every4)``, ...) distilled and evaluated with the same evaluation config (architectures x seeds);
the full-data accuracy of the first architecture as the ceiling; the CMI of every set under the proxies.
The jobs are the demo's (``demo.demo_jobs``) with IPC, iterations and evaluation sizes changed, so the
suite and the demo share one protocol.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import proxies as proxy_zoo
from ..app import execute
from ..config import parse_job
from ..demo import demo_jobs
from ..cmi import measure_cmi
from ..device import resolve_device
from ..errors import DivergenceError
from ..evaluate import ENSEMBLE, evaluate
from ..runner import load_job_data, proxies_dir, random_real_set
from ..lam import CMI_SUFFIX
from ._common import GM_LOOPS

if TYPE_CHECKING:
    from . import BenchPlan

log = logging.getLogger(__name__)



# IDC and MTT as in jobs/distill_idc_digits_ipc10.yaml and jobs/distill_mtt_digits_ipc10.yaml.
QUALITY_FIELDS: dict[str, dict[str, Any]] = {
    "idc": {"factor": 2, "lr_img": 0.01, "batch_real": 64, "dsa": False, "outer_loop": 10, "inner_loop": 10},
    "mtt": {"lr_img": 100.0, "dsa": False, "syn_steps": 10, "expert_epochs": 2, "max_start_epoch": 4,
            "batch_syn": 50},
}


def parse_variant(variant: str) -> tuple[str, bool, int, str]:
    """``"dm+cmi(every4)"`` -> (method ``dm``, CMI on, ``cmi.every`` 4, ``cmi.precision`` fp32);
    ``"dm+cmi(bf16)"`` -> (``dm``, on, 1, ``bf16``); ``"gm"`` -> (``gm``, off, 1, ``fp32``)."""
    method, _, cmi = variant.partition("+")
    opts = cmi.partition("(")[2].rstrip(")").split(",") if "(" in cmi else []
    every = next((int(o[len("every"):]) for o in opts if o.startswith("every")), 1)
    return method, bool(cmi), every, "bf16" if "bf16" in opts else "fp32"


def variant_job(base: dict[str, Any], variant: str, ipc: int, iterations: int, out: Path) -> dict[str, Any]:
    """The demo's dm job turned into ``variant`` (``dm``, ``gm+cmi``, ``dm+cmi(every4)``) at ``ipc``."""
    method, cmi, every, precision = parse_variant(variant)
    job = copy.deepcopy(base)
    job.update(name=f"bench-{method}{'-cmi' if cmi else ''}-ipc{ipc}", ipc=ipc)
    job["method"].update(name=method, iterations=iterations)
    if method == "gm":
        outer, inner = GM_LOOPS.get(ipc, (10, 50))
        job["method"].update(outer_loop=outer, inner_loop=inner, dsa=False, lr_img=0.1)
    job["method"].update(QUALITY_FIELDS.get(method, {}))
    if method == "mtt":
        job["experts"] = {"num": 4, "epochs": 10, "dir": str(out / "experts")}
    if cmi:
        job["cmi"] = {**job.get("cmi", {}), "every": every, "precision": precision}
    else:
        job["cmi"] = {"lam": 0.0}
    slug = variant.replace("+", "-").replace("(", "-").replace(")", "")
    job["output"] = {"dir": str(out / f"ipc{ipc}" / slug), "checkpoint_every": 0}
    return job


def run_quality(out: Path, ipcs: list[int], variants: list[str], seeds: int, archs: list[str], iterations: int,
                gm_iterations: int, epochs: int, big_epochs: int, full_epochs: int, lam: float,
                proxy_set: str, proxy_epochs: int) -> dict[str, Any]:
    """Run the suite; returns ``{"rows": [...], "cmi": {...}, "curves": {...}, "ceiling": {...}}``.

    Rows: ``{"ipc", "set", "arch", "acc_mean", "acc_std", "n"}`` plus ``{"arch": "cross_arch_mean"}`` rows.
    """
    base, pre = _base_jobs(out, seeds, archs, epochs, big_epochs, lam, proxy_set, proxy_epochs)
    first = parse_job(base, "bench:quality")
    data = load_job_data(first)
    if any(CMI_SUFFIX in v for v in variants):
        execute(parse_job(pre, "bench:proxies"), data=data)
    proxies = proxy_zoo.load(proxies_dir(first, data), data, resolve_device("cpu")) if _has_proxies(first, data) \
        else None

    found: dict[str, Any] = {"rows": [], "cmi": {}, "curves": {}, "diverged": []}
    for ipc in ipcs:
        its = {v: gm_iterations if v.startswith(("gm", "idc", "mtt")) else iterations for v in variants}
        _one_ipc(ipc, base, its, first, data, proxies, out, found)
    return {"dataset": data.name, "im_size": data.im_size, "lam": lam, "proxy_set": proxy_set, "archs": archs,
            "seeds": seeds, **found, "ceiling": _ceiling(first, data, archs[0], full_epochs)}


def _base_jobs(out: Path, seeds: int, archs: list[str], epochs: int, big_epochs: int, lam: float, proxy_set: str,
               proxy_epochs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The demo's dm+cmi job with the suite's evaluation, lambda and proxies, and its proxy pre-training job."""
    raw = demo_jobs(out, quick=False)
    ev = {**raw["dm"]["eval"], "archs": archs, "num_eval": seeds, "epochs": epochs,
          "epochs_by_arch": {a: big_epochs for a in archs if a in ("VGG11BN", "ResNet18BN", "VGG11", "ResNet18")}}
    base = {**raw["dm+cmi"], "eval": ev, "cmi": {**raw["dm+cmi"]["cmi"], "lam": lam}}
    base["proxies"] = {**base["proxies"], "set": proxy_set, "epochs": proxy_epochs}
    return base, {**raw["pretrain"], "proxies": base["proxies"]}


def _one_ipc(ipc: int, base: dict[str, Any], iterations: dict[str, int], first, data, proxies,
             out: Path, found: dict[str, Any]) -> None:
    """Random-real, then every variant distilled and evaluated at ``ipc``; adds to ``found``'s lists."""
    sets = {"random-real": random_real_set(data, ipc, first.seed)}
    log.info("[quality] ipc %d: evaluating random-real", ipc)
    device = resolve_device(first.device)
    res = evaluate(sets["random-real"].images, sets["random-real"].labels, data, first.eval, first.seed, device)
    found["rows"] += _rows(ipc, "random-real", res.rows("random-real"))
    for v, its in iterations.items():
        job = parse_job(variant_job(base, v, ipc, its, out), f"bench:{v}")
        log.info("[quality] ipc %d: %s (%d iterations), then evaluating", ipc, v, its)
        try:
            result = execute(job, data=data).result
        except DivergenceError as e:  # reported as a row-less variant, not a crashed benchmark
            log.warning("[quality] ipc %d: %s diverged: %s", ipc, v, e)
            found["diverged"].append(f"{v}/ipc{ipc}")
            continue
        sets[v] = result.synset
        found["rows"] += _rows(ipc, v, result.rows)
        h = result.history
        found["curves"][f"{v}/ipc{ipc}"] = {"step": h.step, "loss_dd": h.loss_dd, "cmi": h.cmi}
    if proxies is not None:
        for name, s in sets.items():
            x, y = s.training_set()
            found["cmi"][f"{name}/ipc{ipc}"] = measure_cmi(x.to(device), y.to(device), proxies, data.num_classes,
                                                           first.cmi)


def _ceiling(first, data, arch: str, full_epochs: int) -> dict[str, Any]:
    """The full-data accuracy of ``arch`` (the ceiling every set is compared with)."""
    cfg = first.eval.model_copy(update={"epochs": full_epochs})
    log.info("[quality] full-data ceiling on %s", arch)
    full = evaluate(data.train_x, data.train_y, data, cfg, first.seed, resolve_device(first.device), archs=[arch])
    return {"arch": arch, "acc_mean": full.mean(arch), "acc_std": full.std(arch), "n": len(full.accs[arch]),
            "epochs": full_epochs}


def _has_proxies(job, data) -> bool:
    return (proxies_dir(job, data) / "manifest.json").is_file()


def _rows(ipc: int, name: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [{"ipc": ipc, **r, "set": name} for r in rows]
    means = [r["acc_mean"] for r in rows if r["arch"] != ENSEMBLE]  # the ensemble is not an architecture
    if means:
        out.append({"ipc": ipc, "set": name, "arch": "cross_arch_mean", "acc_mean": sum(means) / len(means),
                    "acc_std": math.nan, "n": len(means)})
    return out


def targets(q: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue targets judged from the rows: DM beats random-real (IPC 1, 10); DM+CMI >= DM - 1 std, lower CMI."""
    arch = q["archs"][0]
    cell = {(r["ipc"], r["set"]): r for r in q["rows"] if r["arch"] == arch}
    out = []
    for ipc in (1, 10):
        dm, rr = cell.get((ipc, "dm")), cell.get((ipc, "random-real"))
        if dm and rr:
            out.append({"target": f"dm > random-real at IPC {ipc} ({arch})", "value": dm["acc_mean"] - rr["acc_mean"],
                        "bound": "> 0", "met": dm["acc_mean"] > rr["acc_mean"]})
    for (ipc, name), r in sorted(cell.items()):
        if name != "dm+cmi" or (ipc, "dm") not in cell:
            continue
        dm = cell[(ipc, "dm")]
        gap = r["acc_mean"] - dm["acc_mean"]
        out.append({"target": f"dm+cmi >= dm - 1 std at IPC {ipc} ({arch})", "value": gap,
                    "bound": f">= -{dm['acc_std']:.4f}", "met": gap >= -max(dm["acc_std"], r["acc_std"])})
        c_dm, c_cmi = q["cmi"].get(f"dm/ipc{ipc}"), q["cmi"].get(f"dm+cmi/ipc{ipc}")
        if c_dm is not None and c_cmi is not None and ipc > 1:
            out.append({"target": f"dm+cmi has lower CMI than dm at IPC {ipc}", "value": c_cmi - c_dm,
                        "bound": "< 0", "met": c_cmi < c_dm})
    return out


def suite(plan: BenchPlan, device: torch.device, out: Path) -> dict[str, Any]:
    """The ``quality`` suite of ``cmidd bench`` at the plan's sizes (on CPU: the demo's protocol)."""
    return run_quality(
        out / "quality", list(plan.quality_ipcs), list(plan.quality_variants), plan.quality_seeds,
        list(plan.quality_archs), plan.quality_iterations, plan.gm_iterations, plan.eval_epochs,
        plan.big_epochs, plan.full_epochs, plan.lam, plan.proxy_set, plan.proxy_epochs,
    )

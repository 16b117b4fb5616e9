"""One GPU window, all the GPU questions: six time-boxed steps, each writing its results as it finishes.

Run it through ``tools/gpu_run.sh`` on a bare GPU machine (it installs the carried wheels first), or as the CPU
dry run at toy sizes that ``tests/test_gpu_run.py`` runs so it cannot rot::

    tools/gpu_run.sh                      # cuda, at most 9 minutes, results under $OUT
    tools/gpu_run.sh --dry --out runs/gpu-run-dry      # CPU, toy sizes, about 3 minutes (budget 9)

Steps, in order (each in a child process with its own time box; a step that fails or runs out of time is
reported as such and the next one starts):

1. ``check``: ``tools/gpu_check.py`` (every method +/- CMI under a device audit, eval vmap vs loop, host syncs).
2. ``harness``: the shared seedbench harness (``harness.py --device``) for DM and DM+CMI at IPC 10 and 50, the
   reference's and cmidd's s/it side by side (``--precision-variants``: then cmidd's fp32 vs bf16 variants).
3. ``gm``: gradient matching, ``method.gm_impl`` loop (the reference's per-class loop) vs batched (one vmap pass
   for all classes), s per image update of DC and DSA at MNIST size IPC 10, and host syncs in one matching loss
   (``tools/gpu_run_steps.py``).
4. ``ray``: a distill job through Ray Train, 1 worker, ``scaling.use_gpu`` (ray from the carried parts).
5. ``reproduce``: mnist5k IPC 10 rows of DC and DSA under the reference evaluation (ConvNet-3, 1000 epochs, 5
   seeds), each at its published 1000 iterations or, when that does not fit its half of the box, at the most
   iterations that fit (labelled), beside random-real and the published numbers (97.4 / 97.8).
6. ``cmi``: DM vs DM+CMI on mnist5k IPC 10 with ResNet18 proxies trained 40 epochs (the paper's proxy), lambda
   set by gradient balance (``alpha`` x g_DD / g_CMI at the start), the zero arm first, on the same seeds
   and iteration count (``--bf16-arm``: also a bf16 arm).

Writes ``gpu_run.json``, ``gpu_run.md``, ``gpu_run.log`` and ``gpu_check.md`` under ``--out`` (default ``$OUT``);
the scratch (data, proxies, sets) stays under ``--work``. The summary is rewritten after every step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

sys.path.insert(0, str(ROOT / "tools"))

from cmidd.curves import strict  # noqa: E402
from cmidd.hooks import Hooks  # noqa: E402
from gpu_run_steps import faster_gm_impl, gm_lines, ray_lines, save, step_gm, step_ray  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and its CPU dry run."""

    device: str
    budget_s: float  # the whole run; each step gets min(its box, what is left)
    boxes: dict[str, float]
    data: str
    harness_args: tuple[str, ...]
    speed_ipcs: tuple[int, ...]
    speed_repeats: int
    ipc: int
    eval_epochs: int
    eval_seeds: int
    published: dict[str, int]  # iterations of each reproduce row (the papers')
    experts: tuple[int, int]  # MTT experts: number, epochs
    proxy_epochs: int
    reproduce_overrides: tuple[str, ...]  # ``--set`` on every reproduce job (the dry run shrinks DC's loops)
    cmi_alphas: tuple[float, ...]
    cmi_max_iterations: int
    balance_draws: int
    gm_images: str = "mnist28"  # the gm step's images (cmidd.bench.speed.speed_data)
    ray_iterations: int = 50


GPU = Sizes(
    device="cuda", budget_s=510, data="mnist5k",
    boxes={"check": 45, "harness": 45, "gm": 50, "ray": 60, "reproduce": 220, "cmi": 110},
    harness_args=("--ipcs", "10", "50", "--repeats", "5", "--warmup", "2", "--threads", "8", "--no-check"),
    speed_ipcs=(10, 50), speed_repeats=5, ipc=10, eval_epochs=1000, eval_seeds=5,
    published={"dc": 1000, "dsa": 1000}, experts=(5, 20), proxy_epochs=40,
    reproduce_overrides=(),
    cmi_alphas=(0.01, 0.03), cmi_max_iterations=20000, balance_draws=8,
)
DRY = Sizes(
    device="cpu", budget_s=540, data="digits",
    boxes={"check": 60, "harness": 120, "gm": 60, "ray": 90, "reproduce": 90, "cmi": 120},
    harness_args=("--tiny", "--threads", "2"), speed_ipcs=(2,), speed_repeats=1, ipc=2, eval_epochs=2,
    eval_seeds=2, published={"dc": 1000, "dsa": 1000}, experts=(1, 3), proxy_epochs=1,
    reproduce_overrides=("method.outer_loop=2", "method.inner_loop=2"),
    cmi_alphas=(1.0,), cmi_max_iterations=3, balance_draws=2, gm_images="digits8", ray_iterations=3,
)


class Deadline(Hooks):
    """Stops the distillation loop once ``at`` (``time.time()``) has passed; counts the steps run."""

    def __init__(self, at: float) -> None:
        self.at, self.steps = at, 0

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.steps = step

    def should_stop(self) -> bool:
        return time.time() > self.at


def _pct(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else 100.0 * v


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------------
# step 1: the GPU check


def step_check(sz: Sizes, work: Path, until: float, args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    import gpu_check

    rc = gpu_check.main(["--device", sz.device, "--out", str(work / "check")])
    report = json.loads((work / "check" / "gpu_check.json").read_text())
    save(work, "check", {"rc": rc, "report": report})


# ---------------------------------------------------------------------------------------------------------------
# step 2: the shared harness, then fp32 vs bf16


def _harness_path(args: argparse.Namespace) -> Path | None:
    for cand in (args.seedbench, ROOT / ".seedbench", ROOT.parent / "shared" / "seedbench"):
        if cand is not None and (Path(cand) / "harness.py").is_file():
            return Path(cand)
    return None


def step_harness(sz: Sizes, work: Path, until: float, args: argparse.Namespace) -> None:
    import importlib.util

    import torch

    bench = _harness_path(args)
    if bench is None:
        save(work, "harness", {"skipped": "harness.py not found (--seedbench, .seedbench/ or ../shared/seedbench/)"})
        return
    # the harness hides GPUs at import (CUDA_VISIBLE_DEVICES=""): initialize CUDA and cache its device count
    # first (torch caches it once initialized), and restore the variable after the import
    if sz.device == "cuda":
        torch.zeros(1, device="cuda")
        torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    spec = importlib.util.spec_from_file_location("seedbench_harness", bench / "harness.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    if visible is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    if sz.device == "cuda":
        torch.cuda.get_device_name(0)  # fails here, before any timing, if the GPU is still hidden
    if sz.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not visible after importing the harness")
    out = work / "harness_raw.json"
    rc = harness.main(["--device", sz.device, "--ref-root", str(bench / "CMIDD"), "--json", str(out),
                       *sz.harness_args])
    raw = json.loads(out.read_text())
    result: dict[str, Any] = {"rc": rc, "rows": raw.get("rows", []), "args": raw.get("args"),
                              "cuda_visible_restored": os.environ.get("CUDA_VISIBLE_DEVICES") == visible,
                              "loadavg": [raw.get("loadavg_start"), raw.get("loadavg_end")], "precision": []}
    save(work, "harness", result)
    if not args.precision_variants:  # answered in the first window (bf16 does not pay on the H200): docs/gpu.md
        return
    # cmidd's precision variants, in the same process on the same device, beside the harness's fp32 rows
    import cmidd.bench.speed as bs

    device = torch.device(sz.device)
    batch_real = 16 if "--tiny" in sz.harness_args else 256
    if batch_real != 256:
        harness.patch_batch_real(bs, batch_real)  # the dry run's harness shrinks the real batch: same here
    data = bs.speed_data("cifar32", batch_real)
    variants = [(False, "fp32", "fp32"), (False, "fp32", "bf16"), (True, "fp32", "fp32"), (True, "bf16", "fp32"),
                (True, "bf16", "bf16")]
    for ipc in sz.speed_ipcs:
        for cmi, cmi_p, dd_p in variants:
            s = bs.Setting("dm", cmi, ipc, "cifar32", cmi_precision=cmi_p, dd_precision=dd_p)
            row = bs.time_loop(s, data, 1, sz.speed_repeats, device)
            result["precision"].append({"setting": s.key, "ipc": ipc, "cmi": cmi, "cmi_precision": cmi_p,
                                        "dd_precision": dd_p, "s_per_iter": row["s_per_iter"],
                                        "peak_mem_mb": row["peak_mem_mb"]})
            print(f"[precision] {s.key}: {row['s_per_iter']['median']:.4f} s/it", flush=True)
            save(work, "harness", result)


# ---------------------------------------------------------------------------------------------------------------
# step 3: the reproduce rows


def _load(sz: Sizes):
    from cmidd.data import load_dataset

    return load_dataset(sz.data, seed=0)


def _eval_mode(data, cfg, device: str, result: dict[str, Any]):
    """``cfg`` as is when its evaluation runs here (one epoch, two seeds); else with ``batched: loop``, the reason
    kept in ``result["eval_fallback"]``: one broken path must not cost the step's every row."""
    from cmidd.evaluate import evaluate

    try:
        evaluate(data.train_x[:20], data.train_y[:20], data, cfg.model_copy(update={"epochs": 1, "num_eval": 2}), 0,
                 device)
        return cfg
    except Exception as e:  # noqa: BLE001 - recorded, then the loop path is used
        result["eval_fallback"] = f"batched={cfg.batched} failed ({type(e).__name__}: {e}); rows use batched=loop"
        print(f"[eval] {result['eval_fallback']}", flush=True)
        return cfg.model_copy(update={"batched": "loop"})


def step_reproduce(sz: Sizes, work: Path, until: float, args: argparse.Namespace) -> None:
    from cmidd.app import execute
    from cmidd.bench.reproduce import PUBLISHED, plan_named, variant_jobs
    from cmidd.evaluate import evaluate
    from cmidd.runner import random_real_set

    data = _load(sz)
    variants = tuple(sz.published)
    plan = plan_named("full", data=sz.data, ipcs=(sz.ipc,), variants=variants, eval_epochs=sz.eval_epochs,
                      seeds=sz.eval_seeds, experts=sz.experts[0], expert_epochs=sz.experts[1],
                      iterations=tuple((v, sz.published[v]) for v in variants))
    result: dict[str, Any] = {"data": data.name, "ipc": sz.ipc, "eval_epochs": sz.eval_epochs,
                              "seeds": sz.eval_seeds, "experts": list(sz.experts), "rows": []}
    jobs = variant_jobs(plan, work / "reproduce", sz.device, sz.reproduce_overrides)
    # the faster gradient-matching implementation the gm step measured on this device (else the default, auto)
    impl, why = faster_gm_impl(work)
    result.update(gm_impl=impl, gm_impl_why=why)
    jobs = {k: j.model_copy(update={"method": j.method.model_copy(update={"gm_impl": impl})}) for k, j in jobs.items()}
    ev = _eval_mode(data, jobs[sz.ipc, "dc"].eval, sz.device, result)
    jobs = {k: j.model_copy(update={"eval": ev}) for k, j in jobs.items()}
    first = jobs[sz.ipc, "dc"]
    t = time.time()
    rr = random_real_set(data, sz.ipc, plan.seed)
    res = evaluate(rr.images, rr.labels, data, first.eval, plan.seed, sz.device)
    eval_s = time.time() - t
    conv = [r for r in res.rows("random-real") if r["arch"] == "ConvNet"][0]
    result["eval_s_factor1"] = eval_s
    result["rows"].append({"variant": "random-real", "acc": _pct(conv["acc_mean"]), "std": _pct(conv["acc_std"]),
                           "published": PUBLISHED["random-real"].get(sz.ipc), "iterations": 0,
                           "published_iterations": 0, "seconds": eval_s})
    save(work, "reproduce", result)
    for i, v in enumerate(variants):
        job = jobs[sz.ipc, v]
        left = until - time.time()
        share = left / (len(variants) - i)  # an even share of what is left
        eval_need = 1.3 * eval_s * job.method.factor**2 + 5
        t0 = time.time()
        box = Deadline(t0 + max(1.0, share - eval_need))
        print(f"[reproduce] {v}: share {share:.0f} s, distill until +{share - eval_need:.0f} s", flush=True)
        row: dict[str, Any] = {"variant": v, "published": PUBLISHED.get(v, {}).get(sz.ipc),
                               "published_iterations": job.method.iterations}
        try:
            r = execute(job, data=data, hooks=box).result
            conv = [x for x in r.rows if x["arch"] == "ConvNet"][0]
            row.update(acc=_pct(conv["acc_mean"]), std=_pct(conv["acc_std"]), iterations=box.steps,
                       distill_s=r.metrics["time/distill_s"], eval_s=r.metrics["time/eval_s"],
                       s_per_iter=r.metrics["time/distill_s"] / max(1, box.steps))
        except Exception as e:  # one row's failure is a finding; the next row still runs
            row.update(acc=None, std=None, iterations=box.steps, error=f"{type(e).__name__}: {e}")
        row["seconds"] = time.time() - t0
        result["rows"].append(row)
        save(work, "reproduce", result)


# ---------------------------------------------------------------------------------------------------------------
# step 4: does CMI help on the paper's proxies at a GPU budget?


def step_cmi(sz: Sizes, work: Path, until: float, args: argparse.Namespace) -> None:
    import torch

    from cmidd import proxies as proxy_zoo
    from cmidd.bench.reproduce import eval_cfg, plan_named, variant_job
    from cmidd.config import parse_job
    from cmidd.distill import distill
    from cmidd.lam import gradient_norms
    from cmidd.hooks import StepClock
    from cmidd.cmi import measure_cmi
    from cmidd.evaluate import evaluate

    device = torch.device(sz.device)
    data = _load(sz)
    plan = plan_named("full", data=sz.data, eval_epochs=sz.eval_epochs, seeds=sz.eval_seeds)
    result: dict[str, Any] = {"data": data.name, "ipc": sz.ipc, "proxy_set": "resnet18-x2",
                              "proxy_epochs": sz.proxy_epochs, "arms": []}

    def job_for(lam: float, iterations: int, dd_precision: str = "fp32", name: str = "arm"):
        raw = variant_job(plan, "dm+cmi", sz.ipc, work / "cmi", sz.device)
        raw["method"].update(iterations=iterations, precision=dd_precision)
        raw["cmi"] = {"lam": lam}
        raw["proxies"] = {"set": "resnet18-x2", "epochs": sz.proxy_epochs, "dir": str(work / "cmi-proxies")}
        raw["output"]["dir"] = str(work / "cmi" / name)
        return parse_job(raw, f"gpu_run cmi {name}")

    t = time.time()
    probe = job_for(1.0, 3)
    ev = _eval_mode(data, probe.eval, sz.device, result)
    proxies = proxy_zoo.ensure(probe.proxies, data, probe.proxies.dir, probe.seed, device)
    result["proxy_s"] = time.time() - t
    g_dd, g_cmi = gradient_norms(probe, data, proxies, sz.balance_draws)
    result.update(g_dd=g_dd, g_cmi=g_cmi, lam_balance=g_dd / g_cmi)
    # seconds per iteration of DM+CMI and one evaluation's cost, to size the arms
    clock = StepClock(start=True)
    distill(job_for(g_dd / g_cmi, 4), data, proxies, clock)
    _sync(device)
    s_it = (clock.stamps[-1] - clock.stamps[1]) / max(1, len(clock.stamps) - 2)
    t = time.time()
    x0, y0 = data.train_x[: 10 * sz.ipc], data.train_y[: 10 * sz.ipc]
    evaluate(x0, y0, data, ev, 0, device)
    eval_s = time.time() - t
    alphas = args.alphas or sz.cmi_alphas
    arms = ([("dm", 0.0, "fp32")] + [(f"dm+cmi a={a:g}", a * g_dd / g_cmi, "fp32") for a in alphas]
            + ([("dm (bf16)", 0.0, "bf16")] if args.bf16_arm else []))
    per_arm = (until - time.time()) / len(arms) - 1.3 * eval_s - 3
    iterations = args.cmi_iterations or max(1, min(sz.cmi_max_iterations, int(per_arm / (1.15 * s_it))))
    result.update(s_per_iter_probe=s_it, eval_s=eval_s, iterations=iterations, eval=eval_cfg(plan))
    save(work, "cmi", result)
    print(f"[cmi] lambda_balance {g_dd / g_cmi:.4g}, {s_it:.4f} s/it, eval {eval_s:.1f} s: {iterations} iterations "
          f"per arm", flush=True)
    for i, (name, lam, precision) in enumerate(arms):
        job = job_for(lam, iterations, precision, name.replace(" ", "_").replace("=", "").replace("(", "")
                      .replace(")", ""))
        job = job.model_copy(update={"eval": ev})
        t = time.time()
        box = Deadline(t + (until - t) / (len(arms) - i) - 1.3 * eval_s)  # an even share of what is left
        synset, history = distill(job, data, proxies if lam > 0 else None, box)
        distill_s = time.time() - t
        x, y = synset.training_set()
        res = evaluate(x, y, data, job.eval, job.seed, device)
        conv = [r for r in res.rows(name) if r["arch"] == "ConvNet"][0]
        cmi_v = measure_cmi(x.to(device), y.to(device), proxies, data.num_classes, job.cmi)
        result["arms"].append({"arm": name, "lam": lam, "precision": precision, "iterations": len(history.step),
                               "acc": _pct(conv["acc_mean"]), "std": _pct(conv["acc_std"]), "cmi_final": cmi_v,
                               "loss_dd_final": history.loss_dd[-1], "distill_s": distill_s,
                               "seconds": time.time() - t})
        save(work, "cmi", result)


STEPS: dict[str, Callable[[Sizes, Path, float, argparse.Namespace], None]] = {
    "check": step_check, "harness": step_harness, "gm": step_gm, "ray": step_ray, "reproduce": step_reproduce,
    "cmi": step_cmi}


# ---------------------------------------------------------------------------------------------------------------
# the summary


def _f(v: Any, p: int = 1, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.{p}f}" if sign else f"{v:.{p}f}"


def markdown(report: dict[str, Any]) -> str:
    env = report["env"]
    lines = [f"# cmidd GPU run ({env.get('gpu') or env['device']})", "",
             f"{env['date']}, `{report['command']}`, torch {env['torch']}, python {env['python']}; "
             f"{_f(report.get('seconds'), 0)} s of a {report['budget_s']:.0f} s budget"
             + (f", reruns {report['rerun_seconds']:.0f} s." if report.get("rerun_seconds") else "."), "",
             "| step | status | seconds | box |", "|---|---|---:|---:|"]
    lines += [f"| {s['step']} | {s['status']}{' (rerun)' if s.get('rerun') else ''} | {_f(s['seconds'], 0)} | "
              f"{s['box']:.0f} |" for s in report["steps"]]
    r = report.get("check", {}).get("report")
    if r:
        lines += ["", "## 1. GPU check", "", f"status **{r.get('status')}**" + (f": {r['error']}" if r.get("error")
                                                                                  else "") + ", the full table in "
                  "`gpu_check.md`.", ""]
        ev = r.get("eval")
        if ev:
            lines.append(f"Evaluation, {ev['seeds']} seeds x {ev['epochs']} epochs of {ev['archs'][0]}: loop "
                         f"{ev['loop_s']:.2f} s, vmap {ev['vmap_s']:.2f} s, loop/vmap **{ev['loop_over_vmap']:.2f}x**.")
        if isinstance(r.get("syncs"), dict) and "dm" in r["syncs"]:
            lines.append(f"Host syncs per iteration (steady state): DM {r['syncs']['dm']['per_iter'][1:]}, "
                         f"DM+CMI {r['syncs']['dm+cmi']['per_iter'][1:]}.")
    h = report.get("harness", {})
    if h.get("rows"):
        lines += ["", "## 2. Speed against the reference (shared harness, same device, one process)", "",
                  "| setting | reference s/it | cmidd s/it | cmidd / reference |", "|---|---:|---:|---:|"]
        for row in h["rows"]:
            ref = row.get("reference", {}).get("s_per_iter", {}).get("median")
            new = row.get("cmidd", {}).get("s_per_iter", {}).get("median")
            lines.append(f"| {row['setting']} | {_f(ref, 4)} | {_f(new, 4)} | "
                         f"{_f(new / ref if ref and new else None, 2)} |")
    if h.get("precision"):
        ref = {row["setting"].split("/")[0] + f"/ipc{row['ipc']}": row.get("reference", {}).get("s_per_iter", {})
               .get("median") for row in h.get("rows", [])}
        lines += ["", "cmidd fp32 vs bf16 (median s/it; `method.precision` = the DD net, `cmi.precision` = the proxy):",
                  "", "| setting | DD net | proxy | s/it | vs fp32 | vs reference |", "|---|---|---|---:|---:|---:|"]
        base = {}
        for p in h["precision"]:
            key = ("dm+cmi" if p["cmi"] else "dm") + f"/ipc{p['ipc']}"
            med = p["s_per_iter"]["median"]
            base.setdefault(key, med)
            lines.append(f"| {key} | {p['dd_precision']} | {p['cmi_precision'] if p['cmi'] else '-'} | {med:.4f} | "
                         f"{med / base[key]:.2f} | {_f(med / ref[key] if ref.get(key) else None, 2)} |")
    if h.get("skipped"):
        lines += ["", f"## 2. Harness: skipped ({h['skipped']})"]
    lines += gm_lines(report.get("gm", {})) + ray_lines(report.get("ray", {}))
    rp = report.get("reproduce", {})
    if rp.get("rows"):
        lines += ["", f"## 5. Reproduce rows ({rp['data']}, IPC {rp['ipc']}, ConvNet-3, {rp['eval_epochs']} eval "
                  f"epochs, {rp['seeds']} seeds; published: full MNIST, 20 seeds)", "",
                  "| set | ours % | published % | gap | vs random-real | iterations (published) | s/it | note |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        rr = rp["rows"][0].get("acc")
        for row in rp["rows"]:
            acc = row.get("acc")
            ours = "-" if acc is None else f"{acc:.1f} +- {row['std']:.1f}"
            gap = acc - row["published"] if acc is not None and row.get("published") else None
            vs = acc - rr if acc is not None and rr is not None and row["variant"] != "random-real" else None
            its, pub = row.get("iterations", 0), row.get("published_iterations", 0)
            note = row.get("error") or ("" if its >= pub else f"reduced: {its} of {pub} iterations fit the box")
            lines.append(f"| {row['variant']} | {ours} | {_f(row.get('published'))} | {_f(gap, 1, True)} | "
                         f"{_f(vs, 1, True)} | {its} ({pub}) | {_f(row.get('s_per_iter'), 3)} | {note} |")
        if rp.get("gm_impl"):
            lines += ["", f"Gradient matching ran with `method.gm_impl: {rp['gm_impl']}` ({rp.get('gm_impl_why')})."]
    for key, title in (("cmi", "## 6. Does CMI help?"), ("cmi_rerun", "### 6b. Does CMI help? (rerun, same seeds)")):
        lines += _cmi_lines(report.get(key, {}), title)
    return "\n".join(lines) + "\n"


def _cmi_lines(c: dict[str, Any], title: str) -> list[str]:
    lines: list[str] = []
    if c.get("arms"):
        lines += ["", f"{title} ({c['data']}, IPC {c['ipc']}, DM from real, ConvNet-3, proxies "
                  f"{c['proxy_set']} trained {c['proxy_epochs']} epochs, {c['iterations']} iterations per arm)", "",
                  f"lambda_balance = g_DD / g_CMI = {c['g_dd']:.4g} / {c['g_cmi']:.4g} = {c['lam_balance']:.4g} "
                  f"(mean image-gradient norms at the start); arms use lambda = alpha x lambda_balance.", "",
                  "| arm | lambda | DD precision | iterations | ConvNet-3 % | vs dm | CMI (final) |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        zero = c["arms"][0]["acc"]
        for a in c["arms"]:
            vs = a["acc"] - zero if a["acc"] is not None and zero is not None else None
            lines.append(f"| {a['arm']} | {a['lam']:.4g} | {a['precision']} | {a['iterations']} | "
                         f"{_f(a['acc'])} +- {_f(a['std'])} | {_f(vs, 2, True)} | {a['cmi_final']:.4g} |")
    return lines


def run_all(sz: Sizes, out: Path, work: Path, args: argparse.Namespace, command: str) -> int:
    """The orchestrator: every step in a child process under its box; the summary after each."""
    import torch

    from cmidd.bench._common import environment

    start = time.time()
    end = start + (args.budget or sz.budget_s)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_run.log"
    report: dict[str, Any] = {"env": environment(torch.device(sz.device)), "command": command,
                              "budget_s": end - start, "dry": args.dry, "steps": []}
    failed = False
    for name in args.steps:
        box = min(sz.boxes[name], end - time.time())
        if box < 10:
            report["steps"].append({"step": name, "status": "skipped: no time left", "seconds": 0, "box": box})
            continue
        t = time.time()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--until", str(t + box - 5),
               "--work", str(work), *(["--dry"] if args.dry else []), *(["--cpu-full"] if args.cpu_full else []), *(["--bf16-arm"] if args.bf16_arm else []),
               *(["--precision-variants"] if args.precision_variants else []),
               *(["--alphas", *map(str, args.alphas)] if args.alphas else []),
               *(["--cmi-iterations", str(args.cmi_iterations)] if args.cmi_iterations else []),
               *(["--seedbench", str(args.seedbench)] if args.seedbench else [])]
        with log.open("a") as fh:
            fh.write(f"\n===== step {name} (box {box:.0f} s) =====\n")
            fh.flush()
            try:
                rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=box).returncode
                status = "ok" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                status = "timed out (partial results kept)"
        failed |= status != "ok"
        step_file = work / f"{name}.json"
        report[name] = json.loads(step_file.read_text()) if step_file.is_file() else {}
        report["steps"].append({"step": name, "status": status, "seconds": time.time() - t, "box": box})
        report["seconds"] = time.time() - start
        print(f"[gpu_run] {name}: {status} ({time.time() - t:.0f} s)", flush=True)
        (out / "gpu_run.json").write_text(json.dumps(strict(report), indent=1, default=str))
        (out / "gpu_run.md").write_text(markdown(report))
        if name == "check" and (work / "check" / "gpu_check.md").is_file():
            shutil.copy(work / "check" / "gpu_check.md", out / "gpu_check.md")
    print(f"[gpu_run] {out / 'gpu_run.md'}, {out / 'gpu_run.json'} ({time.time() - start:.0f} s)")
    return 1 if failed else 0


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from a run and the reruns of some of its steps: a rerun replaces a step that did not end ``ok``
    (its status, its results); a rerun of a step that was ok is kept beside it (``<step>_rerun``). The environment
    and budget are the first's, the commands all listed."""
    out = dict(reports[0])
    out["steps"] = list(out["steps"])
    for r in reports[1:]:
        for s in r["steps"]:
            if s["status"].startswith("skipped") or s["step"] not in r:
                continue
            before = next((x for x in out["steps"] if x["step"] == s["step"]), None)
            if before is not None and before["status"] == "ok":
                out[f"{s['step']}_rerun"] = r[s["step"]]
                out["steps"].append({**s, "step": f"{s['step']}_rerun", "rerun": r["command"]})
                continue
            out["steps"] = [x for x in out["steps"] if x["step"] != s["step"]] + [{**s, "rerun": r["command"]}]
            out[s["step"]] = r[s["step"]]
        out["command"] = f"{out['command']}; rerun: {r['command']}"
        out["rerun_seconds"] = out.get("rerun_seconds", 0) + r.get("seconds", 0)
    order = [k for s in STEPS for k in (s, f"{s}_rerun")]
    out["steps"].sort(key=lambda s: order.index(s["step"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--render", type=Path, nargs="+", help="only write gpu_run.md/json under --out from these "
                    "gpu_run.json files (a run, then reruns of some of its steps)")
    ap.add_argument("--dry", action="store_true", help="CPU at toy sizes (the test's run)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/gpu-run"))
    ap.add_argument("--work", type=Path, default=None, help="scratch (default: a folder beside --out's files)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default: per mode)")
    ap.add_argument("--seedbench", type=Path, default=None, help="the harness's folder (default: .seedbench/, "
                    "else ../shared/seedbench/)")
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    ap.add_argument("--cpu-full", action="store_true", help="the GPU run's sizes on the CPU (2 threads)")
    ap.add_argument("--alphas", type=float, nargs="+", help="cmi step: the lambda arms as multiples of the "
                    "gradient-balancing lambda (default: 0.1 1)")
    ap.add_argument("--cmi-iterations", type=int, help="cmi step: iterations per arm (default: as many as fit)")
    ap.add_argument("--bf16-arm", action=argparse.BooleanOptionalAction, default=False,
                    help="cmi step: also a DM arm with method.precision bf16")
    ap.add_argument("--precision-variants", action=argparse.BooleanOptionalAction, default=False,
                    help="harness step: also cmidd's fp32 vs bf16 variants")
    ap.add_argument("--box", nargs="+", default=[], metavar="STEP=SECONDS",
                    help="a step's time box (default: the plan's), e.g. reproduce=560")
    ap.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)  # a child: run one step
    ap.add_argument("--until", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sz = DRY if args.dry else GPU
    if args.cpu_full:  # the GPU sizes on this CPU (2 threads), e.g. the harness step on an idle machine
        sz = replace(GPU, device="cpu", budget_s=3600, boxes={k: 1800 for k in GPU.boxes},
                     harness_args=tuple(a if a != "8" else "2" for a in GPU.harness_args))
    boxes = dict(sz.boxes)
    for item in args.box:
        name, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if name not in STEPS or not 10 <= seconds <= 3600:
            ap.error(f"--box: STEP=SECONDS with STEP in {', '.join(STEPS)} and 10 <= SECONDS <= 3600, got {item!r}")
        boxes[name] = seconds
    sz = replace(sz, boxes=boxes)
    if args.render:
        report = merge([json.loads(p.read_text()) for p in args.render])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_run.json").write_text(json.dumps(strict(report), indent=1, default=str))
        (args.out / "gpu_run.md").write_text(markdown(report))
        return 0
    if args.step:
        STEPS[args.step](sz, args.work, args.until, args)
        return 0
    if not (args.dry or args.cpu_full):
        import torch

        if not torch.cuda.is_available():
            print("gpu_run: no CUDA GPU is available (use --dry for the CPU dry run)", file=sys.stderr)
            return 1
    work = args.work or Path("/tmp") / f"cmidd-gpu-run-{os.getpid()}"
    return run_all(sz, args.out, work, args, " ".join(["tools/gpu_run.sh", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    sys.exit(main())

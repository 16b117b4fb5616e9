"""The main job: digits -> pretrain proxies -> distil DM and DM+CMI -> cross-architecture evaluation.

The demo's jobs are the YAML files ``cmidd/jobs/demo_*.yaml`` (package data), read by ``demo_jobs``
(``--quick``: toy-size overrides).
It writes under ``out``: one folder per job, ``results.json`` and ``results.md``, and returns the table.

``results.json``::

    {"dataset", "ipc", "rows": [{"set", "arch", "acc_mean", "acc_std", "n"}],
     "cmi": {"<set>": value}, "sha256": {"<set>": checksum}, "seconds": {...}}
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import proxies as proxy_zoo
from .app import execute, open_store
from .curves import draw_comparison
from .config import JOBS_DIR, apply_overrides, parse_job, read_yaml
from .cmi import measure_cmi
from .device import resolve_device
from .gain import draw_seeds
from .names import KEY_ACC, TAG_GAIN
from .protocol import protocol_of_job
from .report import CHANCE_MARK, at_chance, chance_warning, format_gain, gain_text, results_table
from .runner import load_job_data, proxies_dir
from .store import Store

log = logging.getLogger(__name__)

# ConvNetD2 (the distillation net) and VGG11BN (cross-architecture). VGG11 in its BatchNorm variant: at 8x8 and
# ~100 training steps the instance-norm one barely leaves chance level. One VGG11BN epoch costs ~15x a ConvNetD2
# one here, hence fewer epochs for it (eval.epochs_by_arch): 50 epochs reach 88% on random-real (30: 48%).
# Left out, measured on 2 cores: LeNet, whose 300 SGD steps at the protocol's lr 0.01 (one step per epoch at
# IPC 10) barely move it from its initialization (random-real IPC 10: 19% / 13% for 2 seeds; 79% / 68% at
# lr 0.05), so its accuracy was set by the seed, not the set (the same ~30% for every set), and its
# near-chance members spoiled the ensemble's calibration; ResNet18BN, which costs about as much as VGG11BN
# again and would push `make demo` past 15 minutes with setup.
ARCHS = ["ConvNetD2", "VGG11BN"]
# Evaluation DSA (the job files' eval.dsa_strategy): color jitter and a 4x4 cutout destroy 8x8 grey digits (ConvNet on random-real IPC 10: 85% with
# the full strategy vs 95% with crop_scale_rotate). DM's own matching runs without DSA here: at IPC 10 it gave
# 95.1% against 94.1% with crop_scale_rotate (ConvNetD2, 2 seeds each).

# The demo's jobs are the files below, in jobs/ (the one way to make a job: YAML plus overrides). ``quick`` runs
# the same pipeline at toy sizes, for tests and smoke checks (< 3 minutes on 2 cores); outputs go under ``out``.
JOB_FILES = {"pretrain": "demo_pretrain_proxies_digits.yaml", "dm": "demo_distill_dm_digits_ipc10.yaml",
             "dm+cmi": "demo_distill_dmcmi_digits_ipc10.yaml"}
QUICK_PROXIES = ["proxies.set=convnet-x1", "proxies.epochs=5"]
QUICK_DISTILL = ["method.iterations=20", "eval.epochs=30", "eval.epochs_by_arch={VGG11BN: 10}", "eval.num_eval=1"]
LAM = 8000.0  # the paper code's DM value for CIFAR-10 at IPC 10; features-space CMI is ~1e-4 here (the job file's)


def demo_jobs(out: Path, quick: bool = False, jobs_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The demo's three jobs (``pretrain``, ``dm``, ``dm+cmi``) as raw mappings read from ``jobs_dir``'s files
    (default: the checkout's jobs/), every output folder moved under ``out`` (same leaf names).

    Raises:
        ConfigError: a job file is missing or not YAML (its path named).
    """
    jobs_dir = Path(jobs_dir) if jobs_dir is not None else JOBS_DIR
    jobs = {}
    for key, name in JOB_FILES.items():
        raw = read_yaml(jobs_dir / name)
        over = [f"output.dir={out / Path(raw['output']['dir']).name}",
                f"proxies.dir={out / Path(raw['proxies']['dir']).name}"]
        if quick:
            over += QUICK_PROXIES + (QUICK_DISTILL if raw.get("kind") == "distill" else [])
        jobs[key] = apply_overrides(raw, over, f"demo ({jobs_dir / name})")
    return jobs


def run_demo(out: str | Path, quick: bool = False, tracking_uri: str | None = None) -> dict[str, Any]:
    """Run the demo end to end; returns the results mapping (also written to ``out/results.json``).

    Args:
        out: the folder of the jobs' outputs and of ``results.json`` / ``results.md``.
        quick: toy sizes (``SIZES["quick"]``), for tests and smoke checks.
        tracking_uri: a resolved MLflow store: every job is an MLflow run, the sets are registered as
            versions of ``distilled-digits-ipc10`` and the summary gains ``best`` (what ``cmidd best`` answers).

    Returns:
        The ``results.json`` mapping plus ``table`` (the text of ``results.md``).

    Example:
        >>> run_demo("runs/demo-quick", quick=True)["table"]
    """
    out = Path(out)
    jobs = {k: parse_job(v, f"demo:{k}") for k, v in demo_jobs(out, quick).items()}
    data = load_job_data(jobs["dm"])
    store = open_store(tracking_uri) if tracking_uri is not None else None
    with _parent_run(store, data, jobs["dm"].ipc) as parent:
        sets, rows, seconds = _distill_and_evaluate(jobs, data, store, parent)
        cmi = _cmi_of_sets(jobs, data, sets)
        protocol = protocol_of_job(jobs["dm"], data)
        chance = at_chance(rows, data.num_classes)
        summary = {
            "dataset": data.name, "ipc": jobs["dm"].ipc, "im_size": data.im_size, "quick": quick,
            "lam": jobs["dm+cmi"].cmi.lam, "rows": rows, "cmi": cmi,
            "sha256": {k: s.sha256() for k, s in sets.items()}, "seconds": seconds,
            "protocol": {"id": protocol.id, "summary": protocol.summary},
            "num_classes": data.num_classes, "at_chance": chance,
            "warnings": [chance_warning(a, s, data.num_classes) for a, s in chance.items()],
        }
        for line in summary["warnings"]:
            log.warning("%s", line.removeprefix("warning: "))
        if store is not None:
            summary["best"] = store.best(data.name, jobs["dm"].ipc, protocol=protocol.id)
            summary["parent_run_id"] = parent
        summary["table"] = _write_results(out, summary, jobs["dm"])
        draw_comparison(rows, out / "comparison.png", f"{data.name}, IPC {jobs['dm'].ipc}: random-real vs DM vs "
                        f"DM+CMI ({jobs['dm'].eval.num_eval} seeds)")
        if parent is not None:
            _log_parent(store, parent, out, summary)
    return summary


@contextlib.contextmanager
def _parent_run(store: Store | None, data, ipc: int) -> Iterator[str | None]:
    """The demo's parent run in its experiment (None untracked): DM, DM+CMI and the random-real baseline job nest
    under it; it ends FAILED if the demo fails."""
    if store is None:
        yield None
        return
    with store.parent_run(experiment_of(data, ipc), "demo", "demo", data.name, ipc=str(ipc)) as run_id:
        yield run_id


def experiment_of(data, ipc: int) -> str:
    """The demo's experiment: its sets, their baseline and the parent run, side by side."""
    return f"demo-{data.name}-ipc{ipc}"


def _log_parent(store: Store, parent: str, out: Path, summary: dict[str, Any]) -> None:
    """The comparison figure and the tables on the parent run; each set's cross-architecture mean as a metric; the
    gain over random-real on every version it holds (tag ``gain_over_random``) and on the parent."""
    store.tag_gains(summary["best"])
    singles = [r for r in summary["rows"] if r["arch"] != "ensemble"]
    means = {}
    for name in dict.fromkeys(r["set"] for r in singles):
        accs = [r["acc_mean"] for r in singles if r["set"] == name]
        means[f"{KEY_ACC}/{name.replace('+', '-')}"] = sum(accs) / len(accs)
    baseline = summary["best"].get("baseline")
    tags = {TAG_GAIN: gain_text(baseline)} if baseline else {}
    tags |= {"best_version": str(summary["best"]["version"]), "demo.protocol": summary["protocol"]["id"]}
    store.log_summary(parent, [out / "comparison.png", out / "results.md", out / "results.json"],
                      means | {KEY_ACC: summary["best"]["value"]}, tags)


def _distill_and_evaluate(jobs: dict[str, Any], data, store: Store | None, parent: str | None = None):
    """Steps 1-4: proxies, DM, DM+CMI, then the random-real baseline (each a job, tracked in ``store`` when there
    is one: DM, DM+CMI and the baseline as child runs of ``parent``).

    Returns:
        (the three sets by name, the table rows, seconds per step).
    """
    # DM, DM+CMI and their random-real baseline in one experiment: the runs side by side in MLflow's UI
    experiment = experiment_of(data, jobs["dm"].ipc)

    def run(job, experiment=None):
        return execute(job, track=store is not None, store=store, data=data, experiment=experiment,
                       parent_run_id=parent if experiment else None).result

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    log.info("[1/4] pre-training proxies (%s)", jobs["pretrain"].proxies.set)
    run(jobs["pretrain"])
    seconds["pretrain"] = time.perf_counter() - t

    results = {}
    for i, name in enumerate(("dm", "dm+cmi"), start=2):
        t = time.perf_counter()
        log.info("[%d/4] distilling %s at IPC %d, then evaluating on %s", i, name, jobs[name].ipc,
                 ", ".join(jobs[name].eval.archs))
        results[name] = run(jobs[name], experiment)
        seconds[name] = time.perf_counter() - t

    t = time.perf_counter()
    job = jobs["dm"]  # dm and dm+cmi share seed, IPC and eval block: the same paired draws serve both
    draws = draw_seeds(job.seed, own_draw=job.seed)
    log.info("[4/4] evaluating the random-real baseline (draws %s; the table shows draw %d, the sets' own init)",
             draws, job.seed)
    # a baseline job under the sets' eval block (their protocol, so that `cmidd best` can say the paired gain);
    # tracked, each draw is a run of kind baseline nested under the job's run
    scored = run(parse_job({"kind": "baseline", "name": "random-real", "seed": job.seed, "device": job.device,
                            "data": job.data.model_dump(mode="json"), "ipc": job.ipc, "draws": draws,
                            "eval": job.eval.model_dump(mode="json"),
                            "output": {"dir": str(job.output.dir.parent / "random-real")}}, "demo:random-real"),
                 experiment)
    baseline = scored.draws[0].synset  # the first draw: the sets' own initialization
    seconds["random-real"] = time.perf_counter() - t
    own_rows = [{k: v for k, v in r.items() if k != "draw"} | {"set": "random-real"} for r in scored.rows
                if r["draw"] == job.seed]

    sets = {"random-real": baseline, "dm": results["dm"].synset, "dm+cmi": results["dm+cmi"].synset}
    rows = own_rows + results["dm"].rows + results["dm+cmi"].rows
    return sets, rows, seconds


def _cmi_of_sets(jobs: dict[str, Any], data, sets: dict[str, Any]) -> dict[str, float]:
    """The CMI of every set under the demo's proxies (mean over all proxies): a measurement for the table."""
    proxies = proxy_zoo.load(proxies_dir(jobs["dm"], data), data, resolve_device("cpu"))
    cmi_cfg = jobs["dm+cmi"].cmi
    return {k: measure_cmi(*s.training_set(), proxies, data.num_classes, cmi_cfg) for k, s in sets.items()}


def _write_results(out: Path, summary: dict[str, Any], dm_job) -> str:
    """``results.json`` and ``results.md`` under ``out``; returns the text of ``results.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    table = results_table(summary["rows"], list(dm_job.eval.archs), summary["num_classes"])
    cmi_line = "  ".join(f"{k}: {v:.3e}" for k, v in summary["cmi"].items())
    n = dm_job.eval.num_eval
    spread = f"mean +- std over {n} seeds" if n > 1 else "1 seed: no std"
    text = f"digits {summary['im_size']}x{summary['im_size']}, IPC {dm_job.ipc}, test accuracy % ({spread})\n" \
           f"protocol {summary['protocol']['id']}: {summary['protocol']['summary']}\n\n{table}\n"
    if summary["warnings"]:
        text += f"\n{CHANCE_MARK} " + "\n".join(summary["warnings"]) + "\n"
    chance = sorted(summary["at_chance"])
    text += (f"\nthe ranking (acc/cross_arch_mean, which picks the champion) is the mean over "
             f"{', '.join(dm_job.eval.archs)}" + (f"; at chance among them: {', '.join(chance)}" if chance else "")
             + "\n")
    if "best" in summary:
        best = summary["best"]
        text += f"\nbest under this protocol: version {best['version']} ({best['label']}), " \
                f"{format_gain(best['baseline'])}"
        if best["ties"]:
            text += f"; tied with version {', '.join(str(t['version']) for t in best['ties'])}"
        if best["baseline"] is not None:
            text += "\ngain over random-real per set (each over its paired draws): " + ", ".join(
                f"{g['label']} (version {g['version']}) {gain_text(g)}" for g in best["baseline"]["versions"])
        text += "\n"
    text += f"\nCMI under the proxies: {cmi_line}\n"
    (out / "results.md").write_text(text)
    return text

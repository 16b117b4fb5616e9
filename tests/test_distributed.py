"""Ray Train: N workers equal the single-process loop, rank-0 hooks on the driver, restart after a killed
worker from a Ray Train checkpoint, and a tracked job spread over two nodes through the CLI (one MLflow run)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from cmidd.config import parse_job
from cmidd.distill import CHECKPOINT, Hooks, distill
from cmidd.errors import ConfigError, DivergenceError
from cmidd.proxies import ensure

from conftest import tiny_distill

pytest.importorskip("ray")

MEAN4 = {  # CMI over all 4 proxies, averaged: the aggregation the workers' sum reproduces
    "cmi__lam": 100.0, "cmi__agg": "mean", "cmi__k": 4, "cmi__space": "logits", "proxies__set": "convnet-x4",
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class Recorder(Hooks):
    """Records what reaches the driver-side hooks; optionally asks to stop after ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.steps, self.evals, self.ckpts, self.stop_at = [], [], [], stop_at
        self.thread = None

    def on_step(self, step, metrics):
        self.thread = threading.current_thread()
        self.steps.append((step, metrics))

    def on_eval(self, step, metrics):
        self.evals.append((step, metrics))

    def on_checkpoint(self, step, path, synset):
        state = torch.load(path, weights_only=True)
        self.ckpts.append((step, state["step"], synset.images.shape))

    def should_stop(self):
        return self.stop_at is not None and bool(self.steps) and self.steps[-1][0] >= self.stop_at


# -- the sharded terms, without Ray: the workers' parts sum to the whole (float64 references) ----------


def _grad_of(fn, syn: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = syn.clone().requires_grad_(True)
    loss = fn(x)
    if not loss.requires_grad:  # a worker without the drawn proxy: a constant 0
        return float(loss), torch.zeros_like(x)
    (g,) = torch.autograd.grad(loss, x)
    return float(loss.detach()), g


@pytest.mark.parametrize("name", ["dm", "gm"])
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_method_class_shards_sum_to_the_full_loss_and_gradient(digits, name, norm):
    from cmidd.config import NetCfg, method_cfg, method_fields
    from cmidd.data import RealPool
    from cmidd.methods import MethodContext, build_method

    pool = RealPool(digits.train_x.double(), digits.train_y, digits.num_classes)
    fields = dict(name=name, batch_real=8, dsa=True, outer_loop=1, inner_loop=0)
    cfg = method_cfg(**{k: v for k, v in fields.items() if k in method_fields(name)})
    ctx = MethodContext(cfg, NetCfg(name="ConvNetD1", width=8, norm=norm), pool, 1, 10, 8, torch.device("cpu"))
    m = build_method(ctx)
    m.net.double()
    syn, y = pool.random_init(2, torch.Generator().manual_seed(0))

    def loss_with(classes, seed=1):  # the same generator state for every shard, as in lockstep workers
        gen = torch.Generator().manual_seed(seed)
        m.begin_iteration(gen)
        return _grad_of(lambda x: m.loss(x, y, gen, classes), syn)

    full, g_full = loss_with(None)
    parts = [loss_with(list(range(r, 10, 3))) for r in range(3)]
    assert sum(p[0] for p in parts) == pytest.approx(full, rel=1e-10)
    assert torch.allclose(sum(p[1] for p in parts), g_full, rtol=1e-9, atol=1e-12)
    assert all(p[1].abs().sum() > 0 for p in parts)


@pytest.mark.parametrize("agg", ["mean", "random"])
def test_cmi_proxy_shards_sum_to_the_ensemble_value(digits, agg):
    from cmidd.cmi import CMIRegularizer
    from cmidd.methods.base import reinit_
    from cmidd.nets import create_net

    nets = [reinit_(create_net("ConvNetD1", 1, 10, 8, width=8).double(), s) for s in range(5)]
    syn = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(10).repeat_interleave(2)

    def value(held):  # worker r of 2 holds proxies r, r+2, ...
        reg = CMIRegularizer(held, 10, agg, k=4, space="logits")
        return _grad_of(lambda x: reg(x, y, torch.Generator().manual_seed(3)), syn)

    full, g_full = value(nets)
    parts = [value([p if i % 2 == r else None for i, p in enumerate(nets)]) for r in range(2)]
    assert full > 0 and sum(p[0] for p in parts) == pytest.approx(full, rel=1e-10)
    assert torch.allclose(parts[0][1] + parts[1][1], g_full, rtol=1e-9, atol=1e-14)


# -- Ray Train ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxies4(tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("proxies4")
    job = parse_job(tiny_distill(folder, **MEAN4))
    return folder, ensure(job.proxies, digits, folder / "proxies", 0, "cpu")


def _job(folder, **over):
    return parse_job(tiny_distill(folder, **{**MEAN4, **over}))


def test_two_workers_equal_single_process_mean(ray_local, tmp_path, digits, proxies4):
    from cmidd.ray.train import distill_distributed

    folder, proxies = proxies4
    over = {"method__iterations": 20, "output__checkpoint_every": 10, "eval__every": 10, "eval__epochs": 1}
    plain, h_plain = distill(_job(folder, **over), digits, proxies)
    rec = Recorder()
    work = tmp_path / "w"
    work.mkdir()
    job = _job(folder, scaling={"workers": 2, "cpus_per_worker": 0.9}, **over)
    dist, h_dist = distill_distributed(job, digits, proxies, hooks=rec, workdir=work)

    assert rel_err(dist.images, plain.images) < 1e-5
    assert torch.equal(dist.labels, plain.labels)
    assert h_dist.step == list(range(1, 21))
    for key in ("loss_dd", "cmi", "loss_total"):  # the workers' partial terms sum to the whole job's
        a, b = getattr(h_dist, key), getattr(h_plain, key)
        assert all(math.isfinite(x) and abs(x - y) <= 1e-4 * abs(y) + 1e-6 for x, y in zip(a, b)), key
    # rank 0's events reached the caller's hooks, on the caller's thread, each step once
    assert [s for s, _ in rec.steps] == list(range(1, 21)) and rec.thread is threading.current_thread()
    assert [m["loss_total"] for _, m in rec.steps] == h_dist.loss_total
    assert [s for s, _ in rec.evals] == [10] and "acc/cross_arch_mean" in rec.evals[0][1]
    assert rec.ckpts == [(10, 10, plain.images.shape), (20, 20, plain.images.shape)]
    assert (work / CHECKPOINT).is_file() and (work / "ray").is_dir()  # driver copy + Ray Train storage
    workers = json.loads((work / "ray_workers.json").read_text())
    assert sorted(w["rank"] for w in workers) == [0, 1] and len({w["pid"] for w in workers}) == 2


def test_two_workers_with_alpha_step_with_the_drivers_calibrated_lambda(ray_local, tmp_path, digits, proxies4):
    """cmi.alpha: the driver calibrates lambda on all 4 proxies (a worker holds 2); both workers use it."""
    from cmidd.ray.train import distill_distributed

    folder, proxies = proxies4
    alpha = {"cmi__lam": 0.0, "cmi__alpha": 0.2, "cmi__calibrate_draws": 2, "method__iterations": 4}
    plain, _ = distill(_job(folder, **alpha), digits, proxies)
    dist, _ = distill_distributed(_job(folder, scaling={"workers": 2, "cpus_per_worker": 0.9}, **alpha), digits,
                                  proxies)
    assert plain.meta["lam"] > 0 and dist.meta["lam"] == plain.meta["lam"]
    assert rel_err(dist.images, plain.images) < 1e-5


def test_one_worker_equals_plain_loop(ray_local, tmp_path, digits, proxies4):
    from cmidd.ray.train import distill_distributed

    folder, proxies = proxies4
    job = _job(folder, method__iterations=6)
    with_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker (1 CPU): the same kernels, so the same bits
    try:
        plain, _ = distill(job, digits, proxies)
    finally:
        torch.set_num_threads(with_threads)
    one, h = distill_distributed(_job(folder, method__iterations=6, scaling={"workers": 1, "cpus_per_worker": 1}),
                                 digits, proxies)
    assert one.sha256() == plain.sha256() and h.step == list(range(1, 7))


def test_stop_hook_and_resume_across_both_loops(ray_local, tmp_path, digits, proxies4):
    """plain loop stops at 3 -> Ray resumes from its checkpoint, the driver's hook stops it -> the plain loop
    resumes from the driver's checkpoint and finishes: the same set as one uninterrupted run."""
    from cmidd.ray.train import distill_distributed

    folder, proxies = proxies4
    n, work = 30, tmp_path / "w"
    work.mkdir()
    over = {"method__iterations": n, "output__checkpoint_every": 1}
    distill(_job(folder, **over), digits, proxies, hooks=Recorder(stop_at=3), workdir=work)
    rec = Recorder(stop_at=5)
    job = _job(folder, scaling={"workers": 2, "cpus_per_worker": 0.9}, **over)
    _, h = distill_distributed(job, digits, proxies, hooks=rec, workdir=work, resume=True)
    stopped = len(h.step)
    assert 5 <= stopped < n and h.step == list(range(1, stopped + 1))  # the stop arrives a step or two late
    assert [s for s, _ in rec.steps] == list(range(4, stopped + 1))  # resumed after 3
    assert torch.load(work / CHECKPOINT, weights_only=True)["step"] == stopped
    workers = json.loads((work / "ray_workers.json").read_text())
    assert {w["resumed_from"] for w in workers} == {3} and not any(w["ray_checkpoint"] for w in workers)
    final, h = distill(_job(folder, **over), digits, proxies, workdir=work, resume=True)
    plain, _ = distill(_job(folder, **over), digits, proxies)
    assert h.step == list(range(1, n + 1)) and rel_err(final.images, plain.images) < 1e-5


def test_bad_scaling_is_a_config_error_before_any_worker(ray_local, tmp_path, digits):
    from cmidd.ray.train import distill_distributed

    job = parse_job(tiny_distill(tmp_path, scaling={"workers": 3, "cpus_per_worker": 1}))
    with pytest.raises(ConfigError, match="scaling: workers \\* cpus_per_worker"):
        distill_distributed(job, digits, workdir=tmp_path)
    assert not (tmp_path / "ray").exists()
    with pytest.raises(ConfigError, match="cmi.agg must be mean or random"):
        parse_job(tiny_distill(tmp_path, cmi__lam=1.0, cmi__agg="max", scaling={"workers": 2}))


def test_divergence_on_the_workers_is_the_loops_error(ray_local, tmp_path, digits):
    from cmidd.ray.train import distill_distributed

    job = parse_job(tiny_distill(tmp_path, method__lr_img=1e6, net__norm="none", method__iterations=20,
                                 output__checkpoint_every=1,
                                 scaling={"workers": 2, "cpus_per_worker": 0.9}))
    with pytest.raises(DivergenceError, match="loss became"):  # raised once, not retried max_failures times
        distill_distributed(job, digits, workdir=tmp_path)
    assert torch.isfinite(torch.load(tmp_path / CHECKPOINT, weights_only=True)["images"]).all()
    assert len(json.loads((tmp_path / "ray_workers.json").read_text())) == 2  # one start per worker


def test_killed_worker_restarts_from_checkpoint(ray_local, tmp_path, digits, proxies4):
    from cmidd.ray.train import distill_distributed

    folder, proxies = proxies4
    n = 60
    over = {"method__iterations": n, "output__checkpoint_every": 5}
    work = tmp_path / "w"
    work.mkdir()
    killed = {}

    def kill_rank1_after_a_checkpoint():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            records = work / "ray_workers.json"
            if (work / CHECKPOINT).is_file() and records.is_file():
                ranks = {w["rank"]: w["pid"] for w in json.loads(records.read_text())}
                if 1 in ranks:
                    killed["step"] = torch.load(work / CHECKPOINT, weights_only=True)["step"]
                    os.kill(ranks[1], signal.SIGKILL)
                    killed["pid"] = ranks[1]
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank1_after_a_checkpoint, daemon=True)
    killer.start()
    job = _job(folder, scaling={"workers": 2, "cpus_per_worker": 0.9, "max_failures": 2}, **over)
    synset, h = distill_distributed(job, digits, proxies, workdir=work)
    killer.join(5)

    assert "pid" in killed, "the run ended before a checkpoint arrived"
    assert h.step == list(range(1, n + 1))
    workers = json.loads((work / "ray_workers.json").read_text())
    restarts = [w for w in workers if w["ray_checkpoint"]]
    assert {w["rank"] for w in restarts} == {0, 1}  # the whole group restarted from Ray Train's checkpoint
    assert all(w["resumed_from"] >= killed["step"] and w["resumed_from"] % 5 == 0 for w in restarts)
    assert killed["pid"] not in {w["pid"] for w in restarts}
    # resume is exact: the same as the same group never killed (against the plain loop, the workers' partial sums
    # round differently, and over 60 steps that grows to ~2e-3 on an AMX Xeon: 1.3e-7 after 20, measured)
    calm = tmp_path / "calm"
    calm.mkdir()
    never_killed, _ = distill_distributed(job, digits, proxies, workdir=calm)
    assert rel_err(synset.images, never_killed.images) < 1e-6


def test_two_node_cluster_through_the_cli(tmp_path, proxies4):
    from raycluster import cluster

    raw = tiny_distill(tmp_path, method__iterations=6, scaling={"workers": 2, "cpus_per_worker": 1},
                       **{**MEAN4, "proxies__dir": str(proxies4[0] / "proxies")})  # already pre-trained
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    cli = str(Path(sys.executable).with_name("cmidd"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with cluster(tmp_path, (1, 1)) as address:
        out = subprocess.run([cli, "-q", "run", str(tmp_path / "job.yaml"), "--address", address,
                              "--tracking-uri", uri], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    # tracked as without Ray: one MLflow run, rank 0's per-step metrics, its last checkpoint uploaded
    from cmidd.tracking import TAG_STEP, client_for

    client = client_for(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss_total")]
    assert sorted(steps) == list(range(1, 7)) and runs[0].data.tags[TAG_STEP] == "6"
    workers = json.loads((tmp_path / "job" / "ray_workers.json").read_text())
    assert sorted(w["rank"] for w in workers) == [0, 1]
    assert len({w["node_id"] for w in workers}) == 2  # one worker on each node
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    assert result["sha256"] and "acc/cross_arch_mean" in result["metrics"]

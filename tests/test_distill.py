"""The distillation loop: determinism, exact resume, divergence handling, CMI wiring, stop hook."""

from __future__ import annotations

import math

import pytest
import torch

from cmidd.config import parse_job
from cmidd.distill import CHECKPOINT, distill
from cmidd.errors import DivergenceError
from cmidd.proxies import ensure

from conftest import tiny_distill, stop_at


def test_same_seed_same_checksum(tmp_path, digits):
    job = parse_job(tiny_distill(tmp_path))
    a, _ = distill(job, digits)
    b, _ = distill(job, digits)
    assert a.sha256() == b.sha256()
    c, _ = distill(parse_job(tiny_distill(tmp_path, seed=1)), digits)
    assert c.sha256() != a.sha256()


def test_images_move_and_history_is_complete(tmp_path, digits):
    job = parse_job(tiny_distill(tmp_path))
    from cmidd.data import RealPool

    init, _ = RealPool(digits.train_x, digits.train_y, 10).random_init(2, torch.Generator().manual_seed(0))
    s, h = distill(job, digits)
    assert not torch.equal(s.images, init)
    assert h.step == [1, 2, 3, 4] and all(math.isfinite(v) for v in h.loss_dd)
    assert s.labels.tolist() == [c for c in range(10) for _ in range(2)]


def test_resume_equals_uninterrupted(tmp_path, digits):
    full, _ = distill(parse_job(tiny_distill(tmp_path, method__iterations=6)), digits)

    work = tmp_path / "w"
    work.mkdir()
    job = parse_job(tiny_distill(tmp_path, method__iterations=6, output__checkpoint_every=1))
    part, h1 = distill(job, digits, hooks=stop_at(3), workdir=work)
    assert h1.step == [1, 2, 3] and (work / CHECKPOINT).is_file()
    resumed, h2 = distill(job, digits, workdir=work, resume=True)
    assert h2.step == [1, 2, 3, 4, 5, 6]
    assert resumed.sha256() == full.sha256()


def test_divergence_raises_and_keeps_last_good_checkpoint(tmp_path, digits):
    work = tmp_path / "w"
    work.mkdir()
    job = parse_job(tiny_distill(tmp_path, method__lr_img=1e6, net__norm="none", method__iterations=20,
                                 output__checkpoint_every=1))
    with pytest.raises(DivergenceError, match="loss became") as e:
        distill(job, digits, workdir=work)
    assert "checkpoint" in str(e.value)
    state = torch.load(work / CHECKPOINT, weights_only=True)
    assert torch.isfinite(state["images"]).all()


def test_cmi_term_is_used_and_lowers_cmi(tmp_path, digits):
    base = tiny_distill(tmp_path, ipc=4, method__iterations=10, cmi__space="logits")
    job0 = parse_job(base)
    proxies = ensure(job0.proxies, digits, tmp_path / "proxies", 0, "cpu")
    s0, h0 = distill(job0, digits)
    assert all(math.isnan(v) for v in h0.cmi)  # lam=0: no proxy forward at all
    job1 = parse_job(tiny_distill(tmp_path, ipc=4, method__iterations=10, cmi__space="logits", cmi__lam=1000.0))
    s1, h1 = distill(job1, digits, proxies)
    assert all(math.isfinite(v) for v in h1.cmi)
    from cmidd.cmi import measure_cmi

    c0 = measure_cmi(s0.images, s0.labels, proxies, 10, job1.cmi)
    c1 = measure_cmi(s1.images, s1.labels, proxies, 10, job1.cmi)
    assert c1 < c0


def test_ipc1_warns_that_lambda_has_no_effect(tmp_path, digits):
    job = parse_job(tiny_distill(tmp_path, ipc=1, cmi__lam=10.0, method__iterations=1))
    proxies = ensure(job.proxies, digits, tmp_path / "proxies", 0, "cpu")
    with pytest.warns(UserWarning, match="ipc=1"):
        distill(job, digits, proxies)


def test_loop_builds_no_model_and_reads_no_file(tmp_path, digits, monkeypatch):
    """Per iteration: no proxy construction, no torch.load, and every image through one proxy once per CMI
    application (in chunks of rows: cmidd.chunks)."""
    job = parse_job(tiny_distill(tmp_path, ipc=3, method__iterations=5, cmi__lam=1.0, cmi__agg="random"))
    proxies = ensure(job.proxies, digits, tmp_path / "proxies", 0, "cpu")
    forwards = []
    for p in proxies:
        p.register_forward_pre_hook(lambda m, a: forwards.append(a[0].shape[0]))
        orig = p.embed
        p.embed = lambda x, orig=orig: (forwards.append(x.shape[0]), orig(x))[1]
    import cmidd.methods.dm as dm_mod
    import cmidd.nets as nets_mod

    built, loads = [], []
    real_create = nets_mod.create_net
    monkeypatch.setattr(dm_mod, "create_net", lambda *a, **k: (built.append(a[0]), real_create(*a, **k))[1])
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (loads.append(a), real_load(*a, **k))[1])
    distill(job, digits, proxies)
    assert built == ["ConvNetD1"]  # the DM embedder, built once and re-initialized in place
    assert loads == []
    # agg=random: one proxy per iteration sees the whole synthetic set (embed, in chunks of rows)
    assert sum(forwards) == job.method.iterations * job.ipc * digits.num_classes

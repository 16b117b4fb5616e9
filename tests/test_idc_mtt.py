"""IDC (multi-formation + IDC's gradient matching) and MTT (trajectory matching): pieces against hand
computations and float64 gradcheck, then tiny end-to-end runs with exact resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmidd.config import parse_job
from cmidd.distill import CHECKPOINT, distill
from cmidd.errors import ConfigError, IntegrityError
from cmidd.experts import ensure, flat_params, load, unflatten
from cmidd.formation import decode, encode
from cmidd.methods.gm import mse_distance
from cmidd.methods.mtt import param_distance, unrolled_student
from cmidd.nets import create_net
from cmidd.runner import run_job

from conftest import tiny_distill, stop_at

# -- multi-formation ------------------------------------------------------------------------------------


def test_decode_shapes_order_and_pixels():
    img = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4)
    labels = torch.tensor([0, 1])
    x, y = decode(img, labels, 2)
    assert x.shape == (8, 3, 4, 4) and y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # tile (row r, col c) of image n is decoded image 4n + 2r + c: its top-left 2x2 block, upsampled
    for n in range(2):
        for r in range(2):
            for c in range(2):
                tile = img[n : n + 1, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
                want = F.interpolate(tile, size=(4, 4), mode="bilinear", align_corners=False)
                assert torch.equal(x[4 * n + 2 * r + c], want[0])
    assert decode(img, labels, 1)[0] is img  # factor 1 is the identity


def test_encode_then_decode_returns_constant_images():
    vals = torch.arange(8, dtype=torch.float32)
    imgs = vals.view(8, 1, 1, 1).expand(8, 2, 8, 8).contiguous()
    stored = encode(imgs, 2)
    assert stored.shape == (2, 2, 8, 8)
    assert stored[0, 0, 0, 0] == 0 and stored[0, 0, 0, 7] == 1 and stored[0, 0, 7, 0] == 2 and stored[1, 0, 7, 7] == 7
    back, _ = decode(stored, torch.zeros(2, dtype=torch.long), 2)
    assert torch.allclose(back, imgs)


def test_decode_is_differentiable():
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: decode(t, torch.tensor([0, 1]), 2)[0], (x,))


def test_factor_must_divide_the_image(tmp_path, digits):
    job = parse_job(tiny_distill(tmp_path, method__factor=3))
    with pytest.raises(ConfigError, match="method.factor must divide the image size 8"):
        distill(job, digits)


# -- IDC ------------------------------------------------------------------------------------------------


def test_mse_distance_closed_form():
    a, b = [torch.ones(2, 3), torch.zeros(4)], [torch.zeros(2, 3), torch.full((4,), 2.0)]
    assert mse_distance(a, b) == 6 * 1 + 4 * 4


def test_idc_factor2_distils_and_evaluates_decoded(tmp_path, digits):
    job = parse_job(tiny_distill(tmp_path, method__name="idc", method__factor=2, method__outer_loop=2,
                                 method__inner_loop=1, method__lr_img=0.01))
    res = run_job(job, data=digits)
    assert res.synset.images.shape == (20, 1, 8, 8) and res.synset.meta["factor"] == 2
    x, y = res.synset.training_set()
    assert x.shape == (80, 1, 8, 8) and y.tolist()[:8] == [0] * 8
    assert 0 < res.metrics["acc/ConvNetD1"] <= 1
    assert '"factor": 2' in (res.outdir / "synthetic" / "manifest.json").read_text()  # pull decodes it too


def test_idc_with_cmi_sees_decoded_images(tmp_path, digits):
    seen = []

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, x, y, gen, groups=None):
            seen.append((x.shape[0], groups, sorted(set(y.tolist()))))
            return self.inner(x, y, gen, groups)

    import cmidd.distill_state as d  # setup_run builds the regularizer

    orig = d.build_cmi
    d.build_cmi = lambda *a: Spy(orig(*a))
    try:
        job = parse_job(tiny_distill(tmp_path, method__name="idc", method__factor=2, method__outer_loop=1,
                                     method__inner_loop=0, method__iterations=2, cmi__lam=1.0))
        distill(job, digits, proxies=[create_net("ConvNetD1", 1, 10, 8, width=8)])
    finally:
        d.build_cmi = orig
    # class by class: each of the 10 image steps of an iteration sees its class's IPC 2 x 4 tiles only
    assert seen == [(8, 1, [c]) for _ in range(2) for c in range(10)]


def _first_step_delta(tmp_path, digits, momentum: float, proxy=None, **over) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(initial stored images, their change after one IDC outer step, the history's cmi)."""
    job = parse_job(tiny_distill(tmp_path / f"m{momentum}", method__name="idc", method__outer_loop=1,
                                 method__inner_loop=0, method__iterations=1, method__lr_img=0.01,
                                 method__momentum=momentum, **over))
    init = {}
    import cmidd.distill as d

    orig = d._update

    def spy(run, it, gen, only=None):
        init.setdefault("x", run.syn.detach().clone())
        return orig(run, it, gen, only)

    d._update = spy
    try:
        syn, hist = distill(job, digits, proxies=[proxy] if proxy is not None else None)
    finally:
        d._update = orig
    return init["x"], syn.images - init["x"], hist.cmi


def test_idc_steps_class_by_class_with_the_references_momentum(tmp_path, digits):
    """IDC's reference: one SGD step of the whole image tensor per class. Class c's images see their own
    gradient at step c, then only momentum for the C-1-c later steps: their change after one outer step is
    lr g_c (1 - m^(C-c)) / (1 - m), g_c being the change with m = 0 / lr (same draws, same initial images)."""
    _, d0, _ = _first_step_delta(tmp_path, digits, 0.0)
    _, dm, _ = _first_step_delta(tmp_path, digits, 0.5)
    ipc, m = 2, 0.5
    for c in range(10):
        scale = (1 - m ** (10 - c)) / (1 - m)
        got, want = dm[c * ipc:(c + 1) * ipc], scale * d0[c * ipc:(c + 1) * ipc]
        assert want.abs().max() > 0
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7), (c, (got - want).abs().max())


def test_idc_cmi_is_per_class(tmp_path, digits):
    """With CMI, each class step adds the CMI of that class's images alone; with m = 0 no class moves before
    its own step, so the iteration's summed CMI is C x the whole initial set's CMI (equal classes)."""
    from cmidd.cmi import cmi_emp, proxy_log_probs

    torch.manual_seed(0)
    proxy = create_net("ConvNetD1", 1, 10, 8, width=8)
    x0, _, cmi = _first_step_delta(tmp_path, digits, 0.0, proxy, cmi__lam=1.0)
    labels = torch.arange(10).repeat_interleave(2)
    with torch.no_grad():
        whole = float(cmi_emp(proxy_log_probs(proxy, x0, "features"), labels, 10))
    assert cmi[0] == pytest.approx(10 * whole, rel=1e-5)


# -- MTT ------------------------------------------------------------------------------------------------


def test_param_distance_by_hand():
    theta, start, target = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    assert param_distance(theta, start, target) == pytest.approx((0 + 4) / 1)


def test_unflatten_round_trip():
    net = create_net("ConvNetD1", 1, 10, 8, width=4)
    vec = flat_params(net)
    parts = unflatten(vec, net)
    assert all(torch.equal(parts[n], p) for n, p in net.named_parameters())


def test_mtt_loss_gradcheck_float64():
    torch.manual_seed(0)
    from cmidd.nets.mlp import MLP

    net = MLP(1, 3, 2, hidden=4).double()
    net.requires_grad_(False)
    start = flat_params(net).double()
    target = start + 0.1 * torch.randn(start.shape, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    lr = torch.tensor(0.05, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)

    def loss(syn):
        theta0 = start.clone().requires_grad_(True)
        return param_distance(unrolled_student(net, theta0, syn, y, lr, 2, None, gen), start, target)

    syn = torch.randn(3, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss, (syn,))


def _mtt_job(tmp_path, **over):
    fields = dict(method__name="mtt", method__syn_steps=2, method__expert_epochs=1, method__max_start_epoch=1,
                  method__lr_img=10.0)
    job = tiny_distill(tmp_path, **{**fields, **over})
    job["experts"] = {"num": 2, "epochs": 2, "dir": str(tmp_path / "experts")}
    return job


def test_mtt_rule_is_checked_at_the_boundary(tmp_path):
    with pytest.raises(ConfigError, match=r"method.max_start_epoch \+ method.expert_epochs <= experts.epochs"):
        parse_job(_mtt_job(tmp_path, method__max_start_epoch=5))


def test_mtt_runs_learns_its_lr_and_resumes_exactly(tmp_path, digits):
    raw = _mtt_job(tmp_path, method__iterations=4)
    job = parse_job(raw)
    experts = ensure(job.experts, job.net, digits, tmp_path / "experts", 0, "cpu")
    assert len(experts) == 2 and experts[0].shape[0] == 3  # init + 2 epochs
    full, h = distill(job, digits, experts=experts)
    assert all(torch.isfinite(torch.tensor(h.loss_dd)))

    work = tmp_path / "w"
    work.mkdir()
    job_ck = parse_job({**raw, "output": {**raw["output"], "checkpoint_every": 1}})
    distill(job_ck, digits, hooks=stop_at(2), workdir=work, experts=experts)
    state = torch.load(work / CHECKPOINT, weights_only=True)
    assert state["method"]["lr"] != job.method.lr_teacher  # the step size is learned and checkpointed
    resumed, _ = distill(job_ck, digits, workdir=work, resume=True, experts=experts)
    assert resumed.sha256() == full.sha256()


def test_mtt_without_experts_is_a_config_error(tmp_path, digits):
    with pytest.raises(ConfigError, match="needs expert trajectories"):
        distill(parse_job(_mtt_job(tmp_path)), digits)


def test_experts_tamper_is_refused(tmp_path, digits):
    job = parse_job(_mtt_job(tmp_path))
    folder = tmp_path / "experts"
    ensure(job.experts, job.net, digits, folder, 0, "cpu")
    with open(folder / "expert_000.pt", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        load(folder, job.net, digits)


def test_experts_job_is_tracked_and_registered(tmp_path, digits):
    from mlflow import MlflowClient

    from cmidd.tracking import tracked_run

    job = parse_job({"kind": "experts", "name": "experts-test", "net": {"name": "ConvNetD1", "width": 8},
                     "experts": {"num": 2, "epochs": 1, "dir": str(tmp_path / "experts")},
                     "output": {"dir": str(tmp_path / "job")}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tracked_run(job, uri, data=digits)
    assert run.versions == [{"name": "experts-digits-ConvNetD1", "version": 1, "alias": None}]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version("experts-digits-ConvNetD1", "1")
    assert mv.tags["num"] == "2" and len(mv.tags["sha256"].split(",")) == 2
    assert {a.path for a in client.list_artifacts(run.run_id, "experts")} >= {"experts/manifest.json",
                                                                              "experts/expert_000.pt"}
    assert len(load(tmp_path / "experts", job.net, digits)) == 2


def test_idc_alpha_is_calibrated_on_the_class_steps_pull_brute_force(tmp_path, digits):
    """alpha for IDC: lambda = alpha * g_DD / g_CMI with both norms those of the class steps (the root of the summed
    squared norms of class c's DD-term and class c's own-CMI image gradients, drawn in class order), by hand at the
    initial stored images (multi-formation factor 2). The whole-set CMI's gradient is 1/C of the class steps', so the
    whole-set calibration (the code before 2026-12-06) gave a lambda about C = 10 times larger."""
    from cmidd.cmi import cmi_emp, proxy_log_probs
    from cmidd.data import RealPool
    from cmidd.distill import effective_lambda, iteration_generator
    from cmidd.formation import decode, init_stored
    from cmidd.methods import MethodContext, build_method

    torch.manual_seed(0)
    proxy = create_net("ConvNetD1", 1, 10, 8, width=8).eval().requires_grad_(False)
    job = parse_job(tiny_distill(tmp_path, method__name="idc", method__factor=2, method__outer_loop=1,
                                 method__inner_loop=1, method__iterations=1, cmi__alpha=0.2, cmi__calibrate_draws=2))
    pool = RealPool(digits.train_x, digits.train_y, digits.num_classes)
    stored, labels = init_stored(pool, job.ipc, 2, torch.Generator().manual_seed(job.seed))
    m = build_method(MethodContext(job.method, job.net, pool, 1, 10, 8, torch.device("cpu")))
    by_class, whole = [], []
    for draw in range(2):
        gen = iteration_generator(job.seed, draw)
        m.begin_iteration(gen)
        dd2 = cmi2 = 0.0
        for c in range(10):
            s = stored.clone().requires_grad_(True)
            x, y = decode(s, labels, 2)
            dd2 += float(torch.autograd.grad(m.loss(x, y, gen, [c]), s)[0].norm()) ** 2
            torch.randperm(1, generator=gen)  # the random aggregator's draw of its (only) proxy
            s = stored.clone().requires_grad_(True)
            x, y = decode(s, labels, 2)
            cmi2 += float(torch.autograd.grad(cmi_emp(proxy_log_probs(proxy, x[y == c]), y[y == c], 10), s)[0]
                          .norm()) ** 2
        by_class.append((dd2**0.5, cmi2**0.5))
        s = stored.clone().requires_grad_(True)
        x, y = decode(s, labels, 2)
        whole.append(float(torch.autograd.grad(cmi_emp(proxy_log_probs(proxy, x), y, 10), s)[0].norm()))
    g_dd, g_cmi = (sum(v[i] for v in by_class) / 2 for i in (0, 1))
    assert effective_lambda(job, digits, [proxy]) == pytest.approx(0.2 * g_dd / g_cmi, rel=1e-5)
    assert g_cmi == pytest.approx(10 * sum(whole) / 2, rel=1e-5)  # class c's own CMI: C x its share of the whole's

"""Tests for cmidd.augment (DSA)."""

from __future__ import annotations

import pytest
import torch

from cmidd.augment import (
    _OPS, DSAParams, _Draw, _op_seed, chosen_group, dsa, dsa_classes, op_names, parse_groups, parse_strategy,
)
from cmidd.errors import ConfigError, UnknownNameError

OPS = ["brightness", "saturation", "contrast", "crop", "cutout", "flip", "scale", "rotate"]


def _images(n: int = 4, c: int = 3, size: int = 8, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(123), dtype=dtype)


def test_same_seed_same_output() -> None:
    x = _images()
    torch.testing.assert_close(dsa(x, 7), dsa(x, 7), rtol=0, atol=0)


def test_different_seed_different_output() -> None:
    x = _images()
    assert not torch.allclose(dsa(x, 7), dsa(x, 8))


def test_no_global_rng_use() -> None:
    state = torch.get_rng_state()
    dsa(_images(), 3)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype_preserved(dtype: torch.dtype) -> None:
    x = _images(dtype=dtype)
    y = dsa(x, 1)
    assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()


def test_leading_samples_share_parameters_across_batch_sizes() -> None:
    # The DM case: real and synthetic batches differ in size but use one seed.
    x = _images(n=10)
    torch.testing.assert_close(dsa(x[:3], 11), dsa(x, 11)[:3])


def test_shared_applies_one_transform_to_all() -> None:
    x = _images(n=1).expand(4, -1, -1, -1).contiguous()
    y = dsa(x, 5, shared=True)
    for i in range(1, 4):
        torch.testing.assert_close(y[i], y[0])
    # The shared parameter set is sample 0's per-sample set.
    torch.testing.assert_close(y[:1], dsa(x, 5)[:1])


@pytest.mark.parametrize("op", OPS)
def test_each_op_changes_input_and_keeps_shape(op: str) -> None:
    x = _images()
    params = DSAParams(strategy=op)
    outs = [dsa(x, s, params) for s in range(4)]
    assert all(o.shape == x.shape for o in outs)
    assert any(not torch.allclose(o, x) for o in outs)


@pytest.mark.parametrize("strategy", [*OPS, "color_crop_cutout_flip_scale_rotate"])
def test_gradcheck(strategy: str) -> None:
    # Every op is affine in x once its parameters are fixed by the seed, so finite differences are exact.
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    params = DSAParams(strategy=strategy)
    assert torch.autograd.gradcheck(lambda t: dsa(t, 3, params), (x,))


def test_full_strategy_gradient_finite_and_nonzero() -> None:
    x = _images(size=16).requires_grad_()
    (grad,) = torch.autograd.grad(dsa(x, 9).square().sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_flip_twice_is_identity() -> None:
    x = _images()
    params = DSAParams(strategy="flip")
    torch.testing.assert_close(dsa(dsa(x, 4, params), 4, params), x, rtol=0, atol=0)


def test_none_strategy_is_identity() -> None:
    x = _images()
    assert dsa(x, 1, DSAParams(strategy="none")) is x
    assert parse_strategy("") == []


def test_parse_strategy_expands_color() -> None:
    assert parse_strategy("color_crop") == ["brightness", "saturation", "contrast", "crop"]
    assert set(OPS) | {"color"} == set(op_names())


def test_bad_strategy_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="flipp") as info:
        parse_strategy("crop_flipp")
    assert isinstance(info.value, UnknownNameError)
    assert "rotate" in str(info.value)  # the choices are listed
    with pytest.raises(ConfigError, match="bogus"):
        DSAParams(strategy="bogus")


@pytest.mark.parametrize("field", ["ratio_scale", "ratio_cutout", "brightness"])
def test_bad_params_raise_config_error(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        DSAParams(**{field: -1.0})


def test_bad_input_rejected() -> None:
    with pytest.raises(ValueError):
        dsa(torch.zeros(3, 8, 8), 0)
    with pytest.raises(TypeError):
        dsa(_images(), 1.5)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_transform_on_gpu() -> None:
    x = _images()
    torch.testing.assert_close(dsa(x.cuda(), 2).cpu(), dsa(x, 2), rtol=1e-4, atol=1e-4)


# --- DSA mode: single (reference aug_mode 'S') vs multi; siamese per-class matching (dsa_classes) ---

FULL = "color_crop_cutout_flip_scale_rotate"


def _changed_group(x: torch.Tensor, y: torch.Tensor, seed: int, params: DSAParams) -> list[int]:
    """Indices of the groups whose multi-mode application alone (with the same streams) reproduces y."""
    hits = []
    for g, (start, ops) in enumerate(parse_groups(params.strategy)):
        out = x
        for i, name in enumerate(ops):
            # one group applied alone, with the stream of its position in the full strategy
            out = _OPS[name](out, _Draw([_op_seed(seed, start + i)], x.shape[0]), params)
        if torch.equal(out, y):
            hits.append(g)
    return hits


def test_single_mode_applies_exactly_one_group_chosen_by_seed() -> None:
    x = _images(n=6, size=16)
    params = DSAParams(strategy=FULL, mode="single")
    groups = parse_groups(FULL)
    assert [ops for _, ops in groups][0] == ("brightness", "saturation", "contrast") and len(groups) == 6
    seen = set()
    for seed in range(40):
        y = dsa(x, seed, params)
        hits = _changed_group(x, y, seed, params)
        assert hits == [chosen_group(seed, params)], (seed, hits)
        assert torch.equal(dsa(x, seed, params), y)  # same seed, same group and output
        seen.add(hits[0])
    assert len(seen) >= 5  # different seeds cover several groups


def test_multi_mode_applies_every_op_in_order() -> None:
    x = _images(n=3, size=16)
    params = DSAParams(strategy=FULL, mode="multi")
    out = x
    for i, name in enumerate(parse_strategy(FULL)):
        out = _OPS[name](out, _Draw([_op_seed(5, i)], 3), params)
    torch.testing.assert_close(dsa(x, 5, params), out, rtol=0, atol=0)


def test_bad_mode_rejected() -> None:
    with pytest.raises(ConfigError, match="mode.*'both'"):
        DSAParams(mode="both")


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_dsa_classes_siamese_same_transform_within_class(mode: str) -> None:
    params = DSAParams(strategy=FULL, mode=mode)
    base = _images(n=3, size=16)
    # real: 5 rows per class, syn: 2 rows per class, every row of class c is the image base[c]
    real_y = torch.arange(3).repeat_interleave(5)
    syn_y = torch.arange(3).repeat_interleave(2)
    seeds = [11, 12, 13]
    real = dsa_classes(base[real_y], real_y, seeds, params)
    syn = dsa_classes(base[syn_y], syn_y, seeds, params)
    for c in range(3):
        for row in real[real_y == c]:
            torch.testing.assert_close(row, syn[syn_y == c][0], rtol=0, atol=0)
        # equals the shared-parameter call on the class alone
        torch.testing.assert_close(syn[syn_y == c], dsa(base[syn_y][syn_y == c], seeds[c], params, shared=True),
                                   rtol=0, atol=0)
    # different classes' transforms differ
    one = [dsa(base[:1], s, params, shared=True) for s in seeds]
    assert not torch.allclose(one[0], one[1])


def test_dsa_classes_order_and_gradient() -> None:
    params = DSAParams(strategy=FULL)
    y = torch.tensor([2, 0, 1, 0, 2, 1, 1])
    x = _images(n=7, size=8).double().requires_grad_()
    seeds = [3, 4, 5]
    out = dsa_classes(x, y, seeds, params)
    for i in range(7):
        torch.testing.assert_close(out[i : i + 1], dsa(x[i : i + 1], seeds[int(y[i])], params, shared=True))
    xs = x.detach()[:4].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: dsa_classes(t, y[:4], seeds, params), (xs,))


def test_eval_single_mode_per_sample_parameters() -> None:
    # evaluation: per-sample draws, still one group per call
    params = DSAParams(strategy="crop", mode="single")
    x = _images(n=1, size=16).expand(8, -1, -1, -1).contiguous()
    y = dsa(x, 3, params)
    assert any(not torch.equal(y[0], y[i]) for i in range(1, 8))


def test_config_dsa_mode_validated_and_passed() -> None:
    from cmidd.config import parse_job

    job = parse_job({"kind": "distill", "method": {"dsa_mode": "multi"}})
    assert job.method.dsa_mode == "multi" and job.eval.dsa_mode == "single"
    with pytest.raises(ConfigError) as e:
        parse_job({"kind": "distill", "eval": {"dsa_mode": "both"}})
    msg = str(e.value)
    assert "eval.dsa_mode" in msg and "both" in msg and "\n" not in msg

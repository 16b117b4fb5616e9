"""Tests for cmidd.augment (DSA)."""

from __future__ import annotations

import pytest
import torch

from cmidd.augment import DSAParams, dsa, op_names, parse_strategy
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

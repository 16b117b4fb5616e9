"""Registry-wide conformance tests for cmidd.nets (every registered net, every supported input shape)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cmidd.errors import ConfigError, UnknownNameError
from cmidd.nets import NETS, create_net

NUM_CLASSES = 5


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("im_size", [8, 16, 28, 32])
@pytest.mark.parametrize("name", NETS.names())
def test_net_conformance(name: str, im_size: int, channels: int) -> None:
    torch.manual_seed(0)
    net = create_net(name, channels, NUM_CLASSES, im_size)
    x = torch.randn(2, channels, im_size, im_size, requires_grad=True)
    emb = net.embed(x)
    out = net(x)
    assert out.shape == (2, NUM_CLASSES)
    assert emb.shape == (2, net.feat_dim)
    assert torch.isfinite(out).all() and torch.isfinite(emb).all()
    torch.testing.assert_close(net.classifier(emb), out)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert torch.isfinite(grad).all()
    # Non-zero input gradient: the net actually looks at its input (guards against e.g. instance norm on
    # 1x1 maps, which outputs a constant).
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["ConvNet", "ConvNetBN", "ResNet18", "ResNet18BN_AP"])
def test_64px(name: str) -> None:
    net = create_net(name, 3, NUM_CLASSES, 64)
    x = torch.randn(2, 3, 64, 64)
    assert net(x).shape == (2, NUM_CLASSES)
    assert net.embed(x).shape == (2, net.feat_dim)


def test_convnet_overrides_and_sizes() -> None:
    net = create_net("ConvNet", 1, 10, 8, depth=2, width=64)
    assert net.feat_dim == 64 * 2 * 2
    # 28x28 is padded to act as 32x32, so MNIST-like and CIFAR-like nets share feature sizes.
    assert create_net("ConvNet", 1, 10, 28).feat_dim == create_net("ConvNet", 3, 10, 32).feat_dim == 2048
    # A caller's override beats the variant's default.
    bn_off = create_net("ConvNetBN", 3, 10, 16, norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bn_off.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in create_net("ConvNetBN", 3, 10, 16).modules())


def test_deep_convnet_on_tiny_images_keeps_pooling_sane() -> None:
    # depth 5 at 8x8: pooling stops before instance norm would see a 1x1 map, the last block may reach 1x1.
    assert create_net("ConvNetD5", 1, 10, 8).feat_dim == 128
    assert create_net("ConvNetD5", 1, 10, 8, norm="batch").feat_dim == 128


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(UnknownNameError, match="ConvNetD5"):
        create_net("ConvNetD5x", 3, 10, 32)


BAD_OPTIONS = [("norm", "bogus"), ("act", "tanhh"), ("pool", "median"), ("depth", 0), ("width", -1)]


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_bad_convnet_option(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=option) as info:
        create_net("ConvNet", 3, 10, 32, **{option: value})
    assert repr(value) in str(info.value)


def test_bad_norm_lists_choices() -> None:
    with pytest.raises(ConfigError) as info:
        create_net("ConvNet", 3, 10, 32, norm="bogus")
    assert "norm" in str(info.value) and "instance" in str(info.value) and "'bogus'" in str(info.value)


@pytest.mark.parametrize("name", ["ConvNet", "LeNet", "ResNet18"])
def test_unknown_option_is_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="widht"):
        create_net(name, 3, 10, 32, widht=64)


def test_group_norm_needs_divisible_width() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        create_net("ConvNetGN", 3, 10, 32, width=30)


def test_same_seed_same_parameters() -> None:
    torch.manual_seed(0)
    a = create_net("ConvNetBN", 3, 10, 16)
    torch.manual_seed(0)
    b = create_net("ConvNetBN", 3, 10, 16)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb
        assert torch.equal(pa, pb)

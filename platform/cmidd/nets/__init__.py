"""Network zoo: every family module registers its factories in ``NETS`` on import.

Example::

    net = create_net("ConvNet", channels=1, num_classes=10, im_size=8, depth=2, width=64)
    logits = net(x)        # x: (B, 1, 8, 8) -> (B, 10)
    feats = net.embed(x)   # (B, net.feat_dim)

Every net has ``forward(x) == classifier(embed(x))`` for x of shape (B, channels, im_size, im_size), where
``embed`` returns (B, feat_dim). Parameters are initialized from torch's default RNG; seed it (for instance
inside ``torch.random.fork_rng``) to build reproducible nets.
"""

from __future__ import annotations

from typing import Any

from torch import nn

# Imported for their registration side effect (timm style); order fixes nothing but reads as a catalogue.
from . import alexnet, convnet, lenet, mlp, resnet, vgg  # noqa: F401
from ._registry import NETS

__all__ = ["NETS", "create_net"]


def create_net(name: str, channels: int, num_classes: int, im_size: int, **kw: Any) -> nn.Module:
    """Build the registered net ``name``.

    Args:
        name: a name from ``NETS.names()``.
        channels: input channels C.
        num_classes: number of logits.
        im_size: input height == width.
        **kw: family options (ConvNet*: width, depth, norm, act, pool; the others take none).

    Returns:
        A module mapping (B, C, im_size, im_size) -> (B, num_classes), with ``embed`` and ``feat_dim``.

    Raises:
        UnknownNameError: ``name`` is not registered (the message suggests the closest name).
        ConfigError: an option is unknown or has a bad value.
    """
    return NETS.get(name)(channels=channels, num_classes=num_classes, im_size=im_size, **kw)

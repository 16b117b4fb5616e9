"""ConvNet, the standard backbone of the dataset-distillation literature, and its registered variants.

A ConvNet is ``depth`` blocks of [Conv3x3(width) -> norm -> act -> pool 2x2] followed by a linear classifier
on the flattened last block output.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ._layers import (
    ACTS,
    NORMS,
    POOLS,
    can_halve,
    check_choice,
    check_geometry,
    check_norm_width,
    check_positive_int,
    make_act,
    make_norm,
    make_pool,
    min_size_for,
    reject_unknown,
)
from ._registry import NETS

_OPTIONS = ("width", "depth", "norm", "act", "pool")


class ConvNet(nn.Module):
    """Depth x [conv -> norm -> act -> pool] feature extractor plus a linear classifier.

    28x28 inputs get padding 3 on the first conv so the net behaves as on 32x32 (the DD convention, which
    lets MNIST-like and CIFAR-like sets share feature sizes). Pooling is skipped once it would shrink the
    map below what the next block's norm needs (1 pixel, 2 for instance norm), so any depth works at 8x8.

    Args:
        channels: input channels C.
        num_classes: number of logits.
        im_size: input height == width.
        width: channels of every conv.
        depth: number of blocks.
        norm: one of ``instance``, ``batch``, ``layer``, ``group``, ``none``.
        act: one of ``relu``, ``sigmoid``, ``leakyrelu``, ``swish``.
        pool: one of ``avg``, ``max``, ``none``.

    Attributes:
        feat_dim: size D of ``embed``'s output, ``width * s * s`` with s the final spatial size.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: int,
        *,
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        act: str = "relu",
        pool: str = "avg",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_geometry(name, channels, num_classes, im_size)
        check_positive_int(name, "width", width)
        check_positive_int(name, "depth", depth)
        check_choice(name, "norm", norm, NORMS)
        check_choice(name, "act", act, ACTS)
        check_choice(name, "pool", pool, POOLS)
        check_norm_width(name, norm, width)

        layers: list[nn.Module] = []
        size, in_ch = im_size, channels
        for block in range(depth):
            pad = 3 if block == 0 and im_size == 28 else 1
            layers.append(nn.Conv2d(in_ch, width, kernel_size=3, padding=pad))
            size += 2 * pad - 2
            layers += [make_norm(norm, width), make_act(act)]
            # The last block's output is only flattened, so it may pool down to 1x1.
            next_min = min_size_for(norm) if block < depth - 1 else 1
            if pool != "none" and can_halve(size, next_min):
                layers.append(make_pool(pool))
                size //= 2
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.feat_dim = width * size * size
        self.classifier = nn.Linear(self.feat_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, feat_dim) flattened last-block features."""
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.classifier(self.embed(x))


def _variant(name: str, **defaults: Any) -> None:
    """Register ``name`` as a ConvNet whose ``defaults`` a caller's keyword overrides still beat."""

    def factory(channels: int, num_classes: int, im_size: int, **kw: Any) -> ConvNet:
        reject_unknown(name, kw, _OPTIONS)
        return ConvNet(channels, num_classes, im_size, **{**defaults, **kw})

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"ConvNet with {defaults or 'the default options'}; overrides: {', '.join(_OPTIONS)}."
    NETS.register(name)(factory)


# One table instead of twenty near-identical functions: each row is a name and its option defaults.
_VARIANTS: dict[str, dict[str, Any]] = {
    "ConvNet": {},
    **{f"ConvNetD{d}": {"depth": d} for d in range(1, 6)},
    **{f"ConvNetW{w}": {"width": w} for w in (32, 64, 128, 256)},
    "ConvNetBN": {"norm": "batch"},
    "ConvNetLN": {"norm": "layer"},
    "ConvNetGN": {"norm": "group"},
    "ConvNetNN": {"norm": "none"},
    "ConvNetMP": {"pool": "max"},
    "ConvNetNP": {"pool": "none"},
    "ConvNetASwish": {"act": "swish"},
    "ConvNetASwishBN": {"act": "swish", "norm": "batch"},
    "ConvNetSigmoid": {"act": "sigmoid"},
}
for _name, _defaults in _VARIANTS.items():
    _variant(_name, **_defaults)
del _name, _defaults

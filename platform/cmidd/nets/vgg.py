"""VGG11 for small images, with instance norm (``VGG11``) or BatchNorm (``VGG11BN``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ._layers import can_halve, check_geometry, make_norm, min_size_for, reject_unknown
from ._registry import NETS

_CFG11: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """Conv3x3 -> norm -> relu stacks with 2x2 max-pools ("M"), then global average pooling.

    28x28 inputs get padding 3 on the first conv so the net acts as on 32x32. An "M" is skipped when it would
    shrink the map below what the following convs' norm needs (1 pixel, 2 for instance norm); the final
    global average pool makes ``feat_dim`` independent of the input size.

    Args:
        channels: input channels C.
        num_classes: number of logits.
        im_size: input height == width.
        cfg: conv widths and "M" markers.
        norm: ``"instance"`` or ``"batch"`` (any of the shared norm names works).

    Attributes:
        feat_dim: width of the last conv (512 for VGG11).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: int,
        *,
        cfg: tuple[int | str, ...] = _CFG11,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        check_geometry(type(self).__name__, channels, num_classes, im_size)
        layers: list[nn.Module] = []
        size, in_ch = im_size, channels
        for i, item in enumerate(cfg):
            if item == "M":
                more_convs = any(c != "M" for c in cfg[i + 1 :])
                if can_halve(size, min_size_for(norm) if more_convs else 1):
                    layers.append(nn.MaxPool2d(2, 2))
                    size //= 2
                continue
            pad = 3 if not layers and im_size == 28 else 1
            layers += [nn.Conv2d(in_ch, int(item), 3, padding=pad), make_norm(norm, int(item)), nn.ReLU()]
            size += 2 * pad - 2
            in_ch = int(item)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.feat_dim = in_ch
        self.classifier = nn.Linear(self.feat_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, feat_dim) globally pooled conv features."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.classifier(self.embed(x))


@NETS.register("VGG11")
def vgg11(channels: int, num_classes: int, im_size: int, **kw: Any) -> VGG:
    """VGG11 with instance norm (GroupNorm(C, C)); takes no options."""
    reject_unknown("VGG11", kw)
    return VGG(channels, num_classes, im_size, norm="instance")


@NETS.register("VGG11BN")
def vgg11_bn(channels: int, num_classes: int, im_size: int, **kw: Any) -> VGG:
    """VGG11 with BatchNorm; takes no options."""
    reject_unknown("VGG11BN", kw)
    return VGG(channels, num_classes, im_size, norm="batch")

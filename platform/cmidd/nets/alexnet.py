"""The small AlexNet of the dataset-distillation literature (5 convs, 3 max-pools), adaptive down to 8x8."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ._layers import can_halve, check_geometry, make_norm, reject_unknown
from ._registry import NETS

# (out channels, kernel, padding, max-pool after) per conv; convs keep the spatial size.
_CFG = ((128, 5, 2, True), (192, 5, 2, True), (256, 3, 1, False), (192, 3, 1, False), (192, 3, 1, True))


class AlexNet(nn.Module):
    """Five conv -> [norm] -> relu layers with max-pools after the 1st, 2nd and 5th.

    28x28 inputs get padding 4 on the first conv so the net acts as on 32x32. A pool is skipped when the map
    is already 1x1.

    Args:
        channels: input channels C.
        num_classes: number of logits.
        im_size: input height == width.
        norm: ``"none"`` (AlexNet) or ``"batch"`` (AlexNetBN), applied after every conv.

    Attributes:
        feat_dim: ``192 * s * s`` with s the final spatial size (4 at 32x32, 1 at 8x8).
    """

    def __init__(self, channels: int, num_classes: int, im_size: int, *, norm: str = "none") -> None:
        super().__init__()
        check_geometry(type(self).__name__, channels, num_classes, im_size)
        layers: list[nn.Module] = []
        size, in_ch = im_size, channels
        for i, (out_ch, kernel, pad, pool) in enumerate(_CFG):
            if i == 0 and im_size == 28:
                pad = 4
            layers.append(nn.Conv2d(in_ch, out_ch, kernel, padding=pad))
            size += 2 * pad - kernel + 1
            layers += [make_norm(norm, out_ch), nn.ReLU()]
            if pool and can_halve(size, 1):
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.feat_dim = in_ch * size * size
        self.classifier = nn.Linear(self.feat_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, feat_dim) flattened conv features."""
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.classifier(self.embed(x))


@NETS.register("AlexNet")
def alexnet(channels: int, num_classes: int, im_size: int, **kw: Any) -> AlexNet:
    """AlexNet without normalization; takes no options."""
    reject_unknown("AlexNet", kw)
    return AlexNet(channels, num_classes, im_size)


@NETS.register("AlexNetBN")
def alexnet_bn(channels: int, num_classes: int, im_size: int, **kw: Any) -> AlexNet:
    """AlexNet with BatchNorm after every conv; takes no options."""
    reject_unknown("AlexNetBN", kw)
    return AlexNet(channels, num_classes, im_size, norm="batch")

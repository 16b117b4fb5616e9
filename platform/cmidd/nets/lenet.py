"""LeNet-5 as used in the dataset-distillation literature, made to work down to 8x8 inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._layers import check_geometry, reject_unknown
from ._registry import NETS


class LeNet(nn.Module):
    """conv(6, 5x5) -> relu -> maxpool, conv(16, 5x5) -> relu -> maxpool, fc 120 -> fc 84 -> classifier.

    The first conv pads by 2 up to 28x28 (the classic MNIST setting) and not above. On small inputs the
    second conv pads by 2 when an unpadded 5x5 conv would leave nothing, and a pool is skipped on a 1x1
    map, so every size >= 1 yields a feature map.

    Attributes:
        feat_dim: 84, the width of the last hidden layer that ``embed`` returns.
    """

    def __init__(self, channels: int, num_classes: int, im_size: int) -> None:
        super().__init__()
        check_geometry(type(self).__name__, channels, num_classes, im_size)
        # With padding 2 a 5x5 conv keeps the size, so even a 1x1 input survives the first conv.
        pad1 = 2 if im_size <= 28 else 0
        size = im_size + 2 * pad1 - 4
        layers: list[nn.Module] = [nn.Conv2d(channels, 6, 5, padding=pad1), nn.ReLU()]
        if size >= 2:
            layers.append(nn.MaxPool2d(2, 2))
            size //= 2
        pad2 = 0 if size >= 5 else 2
        layers += [nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU()]
        size = size + 2 * pad2 - 4
        if size >= 2:
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        # A dummy forward gives the flattened size without repeating the arithmetic above; it draws no
        # random numbers, so it does not perturb the caller's RNG stream.
        with torch.no_grad():
            flat = self.features(torch.zeros(1, channels, im_size, im_size)).flatten(1).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.feat_dim = 84
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, 84) last hidden layer."""
        return self.fc(self.features(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.classifier(self.embed(x))


@NETS.register("LeNet")
def lenet(channels: int, num_classes: int, im_size: int, **kw: Any) -> LeNet:
    """LeNet-5; takes no options."""
    reject_unknown("LeNet", kw)
    return LeNet(channels, num_classes, im_size)

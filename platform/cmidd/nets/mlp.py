"""A two-hidden-layer MLP baseline."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ._layers import check_geometry, reject_unknown
from ._registry import NETS


class MLP(nn.Module):
    """flatten -> Linear(C*H*W, 128) -> relu -> Linear(128, 128) -> relu -> classifier.

    Attributes:
        feat_dim: 128, the second hidden layer that ``embed`` returns.
    """

    def __init__(self, channels: int, num_classes: int, im_size: int, *, hidden: int = 128) -> None:
        super().__init__()
        check_geometry(type(self).__name__, channels, num_classes, im_size)
        self.body = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(channels * im_size * im_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.feat_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, 128) second hidden layer."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.classifier(self.embed(x))


@NETS.register("MLP")
def mlp(channels: int, num_classes: int, im_size: int, **kw: Any) -> MLP:
    """MLP with 128-unit hidden layers; takes no options."""
    reject_unknown("MLP", kw)
    return MLP(channels, num_classes, im_size)

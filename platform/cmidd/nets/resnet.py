"""ResNet18 for small images: instance-norm, BatchNorm and average-pool-downsampling variants."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ._layers import check_geometry, make_norm, min_size_for, reject_unknown
from ._registry import NETS


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by a norm with its own shift.
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def _halve(size: int) -> int:
    # A stride-2 3x3/pad-1 conv and a ceil-mode 2x2 pool both give ceil(size / 2), so the two paths agree.
    return (size + 1) // 2


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection: (B, in_ch, H, W) -> (B, out_ch, H', W').

    With ``avg_pool`` (the DD literature's ``ResNet_AP``) the convs keep stride 1 and down-sampling is a 2x2
    average pool after the first conv and in the shortcut, instead of a stride-2 conv.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, avg_pool: bool) -> None:
        super().__init__()
        down = stride != 1
        self.conv1 = _conv3x3(in_ch, out_ch, 1 if avg_pool else stride)
        self.norm1 = make_norm(norm, out_ch)
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if avg_pool and down else nn.Identity()
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.norm2 = make_norm(norm, out_ch)
        self.act = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if down or in_ch != out_ch:
            if avg_pool:
                proj: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 1, bias=False)]
                if down:
                    proj.append(nn.AvgPool2d(2, 2, ceil_mode=True))
            else:
                proj = [nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)]
            self.shortcut = nn.Sequential(*proj, make_norm(norm, out_ch))

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, H', W'), H' = ceil(H / stride)."""
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(self.pool(out)))
        return self.act(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv3x3 (stride 1, no max-pool: the images are small) -> 4 stages of BasicBlocks -> global pool.

    A stage down-samples only while the result stays large enough for its norm (2x2 for instance norm,
    whose output on a 1x1 map is the constant bias), so 8x8 inputs work with every norm.

    Args:
        channels: input channels C.
        num_classes: number of logits.
        im_size: input height == width.
        blocks: BasicBlocks per stage.
        norm: ``"instance"`` (GroupNorm(C, C)) or ``"batch"`` (any shared norm name works).
        avg_pool: down-sample with average pooling instead of stride-2 convs.

    Attributes:
        feat_dim: 512, the globally pooled width of the last stage.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: int,
        *,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        norm: str = "instance",
        avg_pool: bool = False,
    ) -> None:
        super().__init__()
        check_geometry(type(self).__name__, channels, num_classes, im_size)
        widths = (64, 128, 256, 512)
        self.stem = nn.Sequential(_conv3x3(channels, widths[0]), make_norm(norm, widths[0]), nn.ReLU())
        stages: list[nn.Module] = []
        size, in_ch = im_size, widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            stride = 2 if stage > 0 and _halve(size) >= min_size_for(norm) and size > 1 else 1
            size = _halve(size) if stride == 2 else size
            layer = [BasicBlock(in_ch, width, stride, norm, avg_pool)]
            layer += [BasicBlock(width, width, 1, norm, avg_pool) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layer))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.feat_dim = in_ch
        self.classifier = nn.Linear(self.feat_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, 512) globally pooled features."""
        return self.pool(self.stages(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.classifier(self.embed(x))


@NETS.register("ResNet18")
def resnet18(channels: int, num_classes: int, im_size: int, **kw: Any) -> ResNet:
    """ResNet18 with instance norm (GroupNorm(C, C)), the CMI paper's proxy; takes no options."""
    reject_unknown("ResNet18", kw)
    return ResNet(channels, num_classes, im_size, norm="instance")


@NETS.register("ResNet18BN")
def resnet18_bn(channels: int, num_classes: int, im_size: int, **kw: Any) -> ResNet:
    """ResNet18 with BatchNorm; takes no options."""
    reject_unknown("ResNet18BN", kw)
    return ResNet(channels, num_classes, im_size, norm="batch")


@NETS.register("ResNet18BN_AP")
def resnet18_bn_ap(channels: int, num_classes: int, im_size: int, **kw: Any) -> ResNet:
    """ResNet18 with BatchNorm and average-pool down-sampling; takes no options."""
    reject_unknown("ResNet18BN_AP", kw)
    return ResNet(channels, num_classes, im_size, norm="batch", avg_pool=True)

"""ResNets, CIFAR style (3×3 stem, no max-pool), post-activation as in He et al. 2016.

Blocks (the paper's numbering): 0 = stem, then one per stage (ResNet-18: 1-4, two
residual blocks each).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustlab.models.base import (
    ARCHITECTURES,
    BlockNet,
    Widths,
    conv_block,
    conv_bn,
    pooled_linear,
)


class BasicBlock(nn.Module):
    """Two 3×3 convs; a 1×1 projection shortcut when shape changes."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.unit1 = conv_bn(cin, planes, 3, stride)
        self.unit2 = conv_bn(planes, cout, 3)
        self.shortcut = (
            conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.unit1(x))
        return torch.relu(self.unit2(out) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand (×4); projection shortcut when shape changes."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.unit1 = conv_bn(cin, planes, 1)
        self.unit2 = conv_bn(planes, planes, 3, stride)
        self.unit3 = conv_bn(planes, cout, 1)
        self.shortcut = (
            conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.unit1(x))
        out = torch.relu(self.unit2(out))
        return torch.relu(self.unit3(out) + self.shortcut(x))


def resnet(
    block: type[BasicBlock] | type[Bottleneck],
    stage_blocks: Sequence[int],
    stage_widths: Sequence[int],
    *,
    num_classes: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    widths: Widths,
) -> BlockNet:
    """Assemble a CIFAR-style ResNet; stage ``s`` > 0 starts with stride 2."""
    stem_width = widths(0, stage_widths[0])
    blocks: list[nn.Module] = [conv_block(in_channels, stem_width)]
    stages = [[0]]
    cin = stem_width
    for stage, (count, planes) in enumerate(zip(stage_blocks, stage_widths, strict=True)):
        width = widths(stage + 1, planes)
        stages.append([])
        for i in range(count):
            stages[-1].append(len(blocks))
            blocks.append(block(cin, width, 2 if stage > 0 and i == 0 else 1))
            cin = width * block.expansion
    return BlockNet(blocks, pooled_linear(cin, num_classes), mean, std, stages)


@ARCHITECTURES.register("resnet8")
def resnet8(width: int = 16, image_size: int = 32, **kw: Any) -> BlockNet:
    return resnet(BasicBlock, (1, 1, 1), (width, 2 * width, 4 * width), **kw)


@ARCHITECTURES.register("resnet10")
def resnet10(width: int = 16, image_size: int = 32, **kw: Any) -> BlockNet:
    return resnet(BasicBlock, (1, 1, 1, 1), (width, 2 * width, 4 * width, 8 * width), **kw)


@ARCHITECTURES.register("resnet18")
def resnet18(width: int = 64, image_size: int = 32, **kw: Any) -> BlockNet:
    return resnet(BasicBlock, (2, 2, 2, 2), (width, 2 * width, 4 * width, 8 * width), **kw)


@ARCHITECTURES.register("resnet50")
def resnet50(width: int = 64, image_size: int = 32, **kw: Any) -> BlockNet:
    return resnet(Bottleneck, (3, 4, 6, 3), (width, 2 * width, 4 * width, 8 * width), **kw)

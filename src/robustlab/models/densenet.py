"""DenseNet-BC (Huang et al.), CIFAR stem. Blocks (the paper's numbering): 0 = stem, then
one per dense block with the transition that follows it (DenseNet-121: 1-4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustlab.models.base import ARCHITECTURES, BlockNet, Widths


class DenseLayer(nn.Module):
    """BN-ReLU-conv1×1 (4k) then BN-ReLU-conv3×3 (k); output concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1×1 halving the channels, then 2×2 average pooling."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pool(self.conv(torch.relu(self.bn(x))))
        return out


def densenet(
    stage_layers: Sequence[int],
    growth: int,
    *,
    num_classes: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    widths: Widths,
) -> BlockNet:
    """Assemble DenseNet-BC with compression 0.5; widening multiplies a layer's growth rate."""
    cin = widths(0, 2 * growth)
    blocks: list[nn.Module] = [nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False)]
    stages = [[0]]
    for stage, count in enumerate(stage_layers):
        rate = widths(stage + 1, growth)
        stages.append([])
        for _ in range(count):
            stages[-1].append(len(blocks))
            blocks.append(DenseLayer(cin, rate))
            cin += rate
        if stage < len(stage_layers) - 1:
            stages[-1].append(len(blocks))
            blocks.append(Transition(cin, cin // 2))
            cin //= 2
    head = nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(cin, num_classes),
    )
    return BlockNet(blocks, head, mean, std, stages)


@ARCHITECTURES.register("densenet121")
def densenet121(growth: int = 32, image_size: int = 32, **kw: Any) -> BlockNet:
    return densenet((6, 12, 24, 16), growth, **kw)

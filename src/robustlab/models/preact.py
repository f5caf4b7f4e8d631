"""Pre-activation residual nets: SENet-18 (Hu et al.) and the wide ResNet WRN-32-4.

A pre-activation block computes BN-ReLU-conv twice and adds its input; its
BatchNorm outputs are what a defect masks. Blocks (the paper's numbering): 0 = stem
conv, then one per stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustlab.models.base import ARCHITECTURES, BlockNet, Widths


class SqueezeExcite(nn.Module):
    """Channel gates from globally pooled features (reduction 16)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate: torch.Tensor = self.gate(x)
        return x * gate


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3, BN-ReLU-conv3×3 (+ optional squeeze-excitation), plus the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, se: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.se = SqueezeExcite(cout) if se else nn.Identity()
        needs_projection = stride != 1 or cin != cout
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        gated: torch.Tensor = self.se(out)
        return gated + shortcut


def preact_resnet(
    stage_blocks: Sequence[int],
    stage_widths: Sequence[int],
    stem_width: int,
    *,
    se: bool,
    bottom: Sequence[int] = (0, 1, 2),
    num_classes: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    widths: Widths,
) -> BlockNet:
    """Assemble a pre-activation ResNet; the head adds the final BN-ReLU before pooling."""
    cin = widths(0, stem_width)
    blocks: list[nn.Module] = [nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False)]
    stages = [[0]]
    for stage, (count, planes) in enumerate(zip(stage_blocks, stage_widths, strict=True)):
        cout = widths(stage + 1, planes)
        stages.append([])
        for i in range(count):
            stages[-1].append(len(blocks))
            blocks.append(PreActBlock(cin, cout, 2 if stage > 0 and i == 0 else 1, se=se))
            cin = cout
    head = nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(cin, num_classes),
    )
    return BlockNet(blocks, head, mean, std, stages, bottom)


@ARCHITECTURES.register("senet18")
def senet18(width: int = 64, image_size: int = 32, **kw: Any) -> BlockNet:
    return preact_resnet(
        (2, 2, 2, 2), (width, 2 * width, 4 * width, 8 * width), width, se=True, **kw
    )


@ARCHITECTURES.register("wrn32_4")
def wrn32_4(width: int = 16, image_size: int = 32, **kw: Any) -> BlockNet:
    return preact_resnet((5, 5, 5), (16 * 4, 32 * 4, 64 * 4), width, se=False, bottom=(0, 1), **kw)

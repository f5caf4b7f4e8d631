"""A small LeNet-style CNN for CPU work: three conv blocks, then pooling and one linear layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robustlab.models.base import ARCHITECTURES, BlockNet, Widths, conv_block, pooled_linear


def lenet(
    width: int,
    *,
    num_classes: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    widths: Widths,
) -> BlockNet:
    """Blocks 0-2: conv5×5(w)+pool, conv5×5(2w)+pool, conv3×3(4w)."""
    c0, c1, c2 = widths(0, width), widths(1, 2 * width), widths(2, 4 * width)
    blocks = [
        conv_block(in_channels, c0, 5, pool=True),
        conv_block(c0, c1, 5, pool=True),
        conv_block(c1, c2, 3),
    ]
    return BlockNet(blocks, pooled_linear(c2, num_classes), mean, std)


@ARCHITECTURES.register("lenet")
def lenet_zoo(width: int = 16, image_size: int = 32, **kw: Any) -> BlockNet:
    return lenet(width, **kw)

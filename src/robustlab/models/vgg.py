"""VGG with BatchNorm and a single linear layer on top (as in the paper's VGG-19).

Blocks (the paper's numbering): one per stage, the convs between two max-pools (VGG-19:
0-4). A max-pool joins the module of the conv before it, and is left out where the
feature map is already 1×1 (small inputs such as 28×28).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from robustlab.models.base import ARCHITECTURES, BlockNet, Widths, conv_block, pooled_linear

VGG19 = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)


def vgg(
    config: Sequence[int | str],
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    widths: Widths,
) -> BlockNet:
    """Assemble a VGG from a config of channel counts and ``"M"`` (max-pool)."""
    blocks: list[nn.Sequential] = []
    stages: list[list[int]] = [[]]
    cin, size = in_channels, image_size
    for item in config:
        if item == "M":
            if size >= 2:
                blocks[-1].add_module("pool", nn.MaxPool2d(2))
                size //= 2
            stages.append([])
            continue
        cout = widths(len(stages) - 1, int(item))
        stages[-1].append(len(blocks))
        blocks.append(conv_block(cin, cout))
        cin = cout
    stages = [s for s in stages if s]
    # the paper's VGG is defective in blocks 0-1 ("vgg_drop_01")
    return BlockNet(blocks, pooled_linear(cin, num_classes), mean, std, stages, bottom=(0, 1))


@ARCHITECTURES.register("vgg19")
def vgg19(image_size: int = 32, **kw: Any) -> BlockNet:
    return vgg(VGG19, image_size=image_size, **kw)

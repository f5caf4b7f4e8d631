"""Baselines the paper compares defective CNNs with: spatial dropout and DropBlock.

Both act on one block's output during training only (the paper: block 3, keep 0.9).
Label smoothing is a loss option of :mod:`robustlab.training`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

REGULARIZERS = ("dropout2d", "dropblock")


class DropBlock2d(nn.Module):
    """DropBlock (Ghiasi et al. 2018): drop contiguous ``block_size``² squares of a feature map.

    Block centres are sampled with rate γ = (1 - keep) / bs² · HW / ((H - bs + 1)(W - bs + 1)),
    so about a fraction 1 - keep of the activations is dropped; kept ones are rescaled
    by (#units / #kept) as in dropout.
    """

    def __init__(self, keep_prob: float = 0.9, block_size: int = 3) -> None:
        super().__init__()
        if not 0 < keep_prob <= 1:
            raise ValueError(f"keep_prob {keep_prob} must be in (0, 1]")
        self.keep_prob = keep_prob
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.keep_prob == 1:
            return x
        _, _, h, w = x.shape
        bs = min(self.block_size, h, w)
        valid = (h - bs + 1) * (w - bs + 1)
        gamma = (1 - self.keep_prob) / bs**2 * (h * w) / valid
        centres = (torch.rand_like(x) < gamma).to(x.dtype)
        dropped = F.max_pool2d(centres, bs, stride=1, padding=bs // 2)[..., :h, :w]
        keep = 1 - dropped
        return x * keep * (keep.numel() / keep.sum().clamp_min(1))


def make_regularizer(name: str, keep_prob: float = 0.9) -> nn.Module:
    """``dropout2d`` (spatial dropout) or ``dropblock`` (3×3 blocks) with the given keep rate."""
    if name == "dropout2d":
        return nn.Dropout2d(1 - keep_prob)
    if name == "dropblock":
        return DropBlock2d(keep_prob, 3)
    raise ValueError(f"unknown regularizer {name!r}; use one of {', '.join(REGULARIZERS)}")

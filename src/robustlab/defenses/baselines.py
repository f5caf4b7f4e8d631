"""Baselines the paper compares defective CNNs with.

- Spatial dropout and DropBlock act on one block's output during training only (the paper:
  block 3, keep 0.9).
- Thermometer encoding (Buckman et al. 2018) replaces each pixel by L binary levels.
- Label smoothing and adversarial training (Madry et al.) are options of
  :class:`robustlab.training.TrainConfig`.
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


class ThermometerEncoding(nn.Module):
    """Encode each pixel v ∈ [0, 1] as L bits τ(v)_k = 1[v ≥ k / L], k = 1..L.

    (N, C, H, W) becomes (N, C·L, H, W), channel-major (all levels of channel 0 first).
    The encoding is piecewise constant, so its gradient is zero almost everywhere: gradient
    attacks against it see no signal (gradient masking), transfer attacks still apply.

    ``bpda=True`` (what :func:`~robustlab.defenses.base.attack_view` gives an attacker):
    the same bits forward, and backward the gradient of a ramp per level,
    ĝ_k(v) = clip(L·v − (k − 1), 0, 1), which equals τ_k outside ((k−1)/L, k/L): BPDA with a
    differentiable approximation (Athalye et al. 2018, who broke thermometer encoding so).
    ``relaxed=True``: the ramps forward too, a soft encoding an attacker differentiates
    exactly (the linear form of LS-PGA's relaxation, Buckman et al. 2018); its adversarials
    are scored on the real encoding.
    """

    thresholds: torch.Tensor

    def __init__(self, levels: int, bpda: bool = False, *, relaxed: bool = False) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"thermometer encoding needs at least 2 levels, got {levels}")
        self.levels, self.bpda, self.relaxed = levels, bpda, relaxed
        self.register_buffer("thresholds", torch.arange(1, levels + 1) / levels, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = x.unsqueeze(2)
        thresholds = self.thresholds.view(1, 1, -1, 1, 1).to(x.dtype)
        bits = (levels >= thresholds).to(x.dtype)
        if self.bpda or self.relaxed:
            ramp = (self.levels * (levels - thresholds) + 1).clamp(0, 1)
            if self.relaxed:
                return ramp.flatten(1, 2)
            return (bits + (ramp - ramp.detach())).flatten(1, 2)
        # `+ 0 * levels` keeps the graph connected: gradient attacks get an honest zero
        # gradient instead of an error about an input that was not used
        return (bits + 0 * levels).flatten(1, 2)

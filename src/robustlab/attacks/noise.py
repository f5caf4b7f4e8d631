"""Additive Gaussian noise (the Defective-CNN paper, §4.3).

x' = clip(x + clip(n, -2σ, 2σ), 0, 1),  n ~ N(0, σ²) per pixel, σ given in 0-255 units.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.base import ATTACKS, Attack, AttackResult, check_range


@ATTACKS.register()
class GaussianNoise(Attack):
    """Truncated Gaussian noise of standard deviation ``sigma``/255; ignores the labels."""

    name = "noise"
    gradient = False

    def __init__(self, model: nn.Module, sigma: float = 8.0, *, seed: int = 0) -> None:
        super().__init__(model, seed=seed)
        self.sigma = check_range("sigma", sigma, 0.0, 255.0, " (0-255 pixel units)")

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> AttackResult:
        std = self.sigma / 255
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * std
        return AttackResult((x + noise.clamp(-2 * std, 2 * std)).clamp(0, 1))

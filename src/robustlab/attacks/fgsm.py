"""Fast gradient sign method (Goodfellow et al. 2015): x' = clip(x + ε·sign(∇ₓ L(x, y)), 0, 1)."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.base import ATTACKS, Attack, AttackResult, check_eps, input_gradient


@ATTACKS.register()
class FGSM(Attack):
    """One signed-gradient step of size ``eps`` (pixels in [0, 1])."""

    name = "fgsm"

    def __init__(self, model: nn.Module, eps: float = 8 / 255, *, seed: int = 0) -> None:
        super().__init__(model, seed=seed)
        self.eps = check_eps("eps", eps)

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> AttackResult:
        labels = y if target is None else target
        grad = input_gradient(self.model, x, labels, targeted=target is not None)
        return AttackResult((x + self.eps * grad.sign()).clamp(0, 1))

"""Momentum iterative FGSM (Dong et al. 2018).

g_{t+1} = μ·g_t + ∇ₓ L(x_t, y) / ‖∇ₓ L(x_t, y)‖₁,  x_{t+1} = Π_{B∞(x, ε)} (x_t + α·sign(g_{t+1})).

Each example's gradient is normalised by its own ℓ1 norm (taken as the mean absolute value,
which differs by the constant pixel count and leaves every sign unchanged), so the result
does not depend on the batch it is computed in.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.base import (
    ATTACKS,
    Attack,
    AttackResult,
    check_eps,
    check_steps,
    input_gradient,
    project_linf,
)


@ATTACKS.register()
class MIFGSM(Attack):
    """``steps`` momentum steps of size ``step`` in the ℓ∞ ball of radius ``eps``; decay μ."""

    name = "mifgsm"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        step: float = 1 / 255,
        steps: int = 20,
        decay: float = 1.0,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(model, seed=seed)
        self.eps = check_eps("eps", eps)
        self.step = check_eps("step", step)
        self.steps = check_steps("steps", steps)
        if decay < 0:
            raise ValueError(f"decay={decay} must be >= 0")
        self.decay = float(decay)

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> AttackResult:
        labels = y if target is None else target
        adv = x.clone()
        momentum = torch.zeros_like(x)
        for _ in range(self.steps):
            grad = input_gradient(self.model, adv, labels, targeted=target is not None)
            l1 = grad.abs().mean(dim=tuple(range(1, grad.ndim)), keepdim=True)
            momentum = self.decay * momentum + grad / l1.clamp_min(1e-30)
            adv = project_linf(adv + self.step * momentum.sign(), x, self.eps)
        return AttackResult(adv)

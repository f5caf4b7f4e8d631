"""Projected gradient descent (Madry et al. 2018; the Defective-CNN paper's iterative attack).

ℓ∞:  x_{t+1} = Π_{B∞(x, ε) ∩ [0,1]} (x_t + α·sign(∇ₓ L(x_t, y)))
ℓ2:  x_{t+1} = Π_{B2(x, ε) ∩ [0,1]} (x_t + α·∇ₓ L / ‖∇ₓ L‖₂)

Starts at x (the paper's form) unless ``random_start``, which starts uniformly in the ball
(ℓ∞) or at a random point of it (ℓ2).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from robustlab.attacks.base import (
    ATTACKS,
    Attack,
    AttackResult,
    check_eps,
    check_radius,
    check_steps,
    input_gradient,
    per_example_norm,
    project_l2,
    project_linf,
)


@ATTACKS.register()
class PGD(Attack):
    """``steps`` steps of size ``step`` inside the ``norm`` ball of radius ``eps``."""

    name = "pgd"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 16 / 255,
        step: float = 1 / 255,
        steps: int = 20,
        random_start: bool = False,
        norm: Literal["linf", "l2"] = "linf",
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(model, seed=seed)
        self.eps, self.norm = check_radius(eps, norm, positive=False), norm
        # the step has the units of the radius
        self.step = check_eps("step", step) if norm == "linf" else float(step)
        if self.step <= 0:
            raise ValueError(f"step={step} must be > 0")
        self.steps = check_steps("steps", steps)
        self.random_start = bool(random_start)

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> AttackResult:
        labels = y if target is None else target
        adv = self._start(x, generator)
        for _ in range(self.steps):
            grad = input_gradient(self.model, adv, labels, targeted=target is not None)
            if self.norm == "linf":
                adv = project_linf(adv + self.step * grad.sign(), x, self.eps)
            else:
                direction = grad / per_example_norm(grad, 2).clamp_min(1e-12)
                adv = project_l2(adv + self.step * direction, x, self.eps)
        return AttackResult(adv)

    def _start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        if self.norm == "linf":
            return (x + self.eps * noise).clamp(0, 1)
        return project_l2(x + noise * self.eps / per_example_norm(noise, 2), x, self.eps)

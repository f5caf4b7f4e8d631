"""sPGD: stochastic projected gradient ascent on one shared perturbation
(Mummadi et al., 2019; Shafahi et al., 2020).

Over mini-batches, v ← Proj_ξ(v + step · sign(∇_v mean CE(f(x + v), clean label))).
The cross-entropy is clipped at ``clip`` per example so that already-fooled
images stop dominating the gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustlab.attacks.universal.base import (
    UNIVERSAL_ATTACKS,
    Norm,
    UniversalAttack,
    apply,
    project,
    shuffled_batches,
)
from robustlab.models.base import predict


@UNIVERSAL_ATTACKS.register()
class SPGD(UniversalAttack):
    name = "spgd"

    def __init__(
        self,
        model: torch.nn.Module,
        xi: float = 10 / 255,
        norm: Norm = "linf",
        step: float = 1 / 255,
        epochs: int = 5,
        batch_size: int = 32,
        clip: float = 10.0,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(model, xi, norm, seed=seed)
        self.step, self.epochs, self.batch_size, self.clip = step, epochs, batch_size, clip

    def _generate(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        v = torch.zeros_like(images[0])
        clean = predict(self.model, images).to(images.device)
        for _ in range(self.epochs):
            for batch in shuffled_batches(len(images), self.batch_size, generator, images.device):
                v = v.detach().requires_grad_(True)
                logits = self.model(apply(images[batch], v))
                loss = F.cross_entropy(logits, clean[batch], reduction="none").clamp(max=self.clip)
                (grad,) = torch.autograd.grad(loss.mean(), v)
                direction = grad.sign() if self.norm == "linf" else grad / (grad.norm() + 1e-12)
                v = project(v.detach() + self.step * direction, self.xi, self.norm)
        return v.detach()

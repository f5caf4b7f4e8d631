"""FFF: Fast Feature Fool (Mopuri et al., 2017), data-free.

With no images, v maximises the activations of the convolutional layers for
the input v itself: loss = −Σ_layers log(mean |a_layer(v)|), minimised by signed
gradient steps and projected onto the ξ ball. v starts uniform in [−ξ, ξ].
The input is v + 0.5 (a mid-grey image), since our models expect pixels in [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.universal.base import (
    UNIVERSAL_ATTACKS,
    Norm,
    UniversalAttack,
    conv_activations,
    project,
)


@UNIVERSAL_ATTACKS.register()
class FFF(UniversalAttack):
    name = "fff"
    needs_images = False

    def __init__(
        self,
        model: nn.Module,
        xi: float = 10 / 255,
        norm: Norm = "linf",
        steps: int = 200,
        step: float = 0.5 / 255,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(model, xi, norm, seed=seed)
        self.steps, self.step = steps, step

    def _generate(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shape = images.shape[1:]
        v = (torch.rand(shape, generator=generator, device=images.device) * 2 - 1) * self.xi
        with conv_activations(self.model) as activations:
            for _ in range(self.steps):
                activations.clear()
                v = v.detach().requires_grad_(True)
                self.model((0.5 + v).clamp(0, 1).unsqueeze(0))
                loss = -torch.stack([torch.log(a.abs().mean() + 1e-12) for a in activations]).sum()
                (grad,) = torch.autograd.grad(loss, v)
                v = project(v.detach() - self.step * grad.sign(), self.xi, self.norm)
        return v.detach()

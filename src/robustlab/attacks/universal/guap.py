"""G-UAP: the generalisable data-free objective (Mopuri, Ganeshan & Babu 2018, "Generalizable
data-free objective for crafting universal adversarial perturbations", TPAMI).

δ maximises the activations of every convolutional layer,

    L(δ) = −Σ_l log ‖a_l(x̃ + δ)‖₂ ,    ‖δ‖ ≤ ξ,

optimised with Adam and projected onto the ξ ball after every step, where x̃ is the prior:

- ``"none"``: a mid-grey image (the paper feeds δ alone to a mean-subtracted network; our
  models take pixels in [0, 1], so 0.5 plays the mean);
- ``"range"``: a batch of pseudo-images drawn in the pixel range, N(μ, σ²) per image with
  μ ~ U(0.2, 0.8) and σ ~ U(0.05, 0.3), clipped to [0, 1];
- ``"data"``: mini-batches of the given images.

It differs from FFF (mean |activation| of each layer, signed steps, grey input only) by
the ℓ2 norms, Adam and the priors. δ starts uniform in [−ξ, ξ].
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from robustlab.attacks.universal.base import (
    UNIVERSAL_ATTACKS,
    Norm,
    UniversalAttack,
    conv_activations,
    project,
)

Prior = Literal["none", "range", "data"]


@UNIVERSAL_ATTACKS.register()
class GUAP(UniversalAttack):
    """Data-free (or data-prior) activation maximisation over all Conv2d layers."""

    name = "guap"
    needs_images = False

    def __init__(
        self,
        model: nn.Module,
        xi: float = 10 / 255,
        norm: Norm = "linf",
        prior: Prior = "none",
        steps: int = 200,
        lr: float = 0.1,
        batch_size: int = 16,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(model, xi, norm, seed=seed)
        if prior not in ("none", "range", "data"):
            raise ValueError(f"guap: prior {prior!r} must be 'none', 'range' or 'data'")
        if steps < 1 or lr <= 0 or batch_size < 1:
            raise ValueError("guap: need steps >= 1, lr > 0 and batch_size >= 1")
        self.prior, self.steps, self.lr, self.batch_size = prior, int(steps), float(lr), batch_size

    def _generate(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.prior == "data" and (images.ndim != 4 or len(images) == 0):
            raise ValueError("guap with prior='data' needs a batch of images (N, C, H, W)")
        shape, device = images.shape[1:], images.device
        # δ = ξ·raw with raw in the unit ball: the learning rate is relative to ξ
        raw = (torch.rand(shape, generator=generator, device=device) * 2 - 1).requires_grad_()
        optimiser = torch.optim.Adam([raw], lr=self.lr)
        with conv_activations(self.model) as activations:
            for _ in range(self.steps):
                activations.clear()
                self.model((self._prior(images, generator) + self.xi * raw).clamp(0, 1))
                loss = -torch.stack([torch.log(a.norm() + 1e-12) for a in activations]).sum()
                optimiser.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                with torch.no_grad():
                    raw.copy_(project(self.xi * raw, self.xi, self.norm) / self.xi)
        return project(self.xi * raw.detach(), self.xi, self.norm)

    def _prior(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shape, device = images.shape[1:], images.device
        if self.prior == "none":
            return torch.full((1, *shape), 0.5, device=device)
        if self.prior == "data":
            pick = torch.randint(
                0, len(images), (self.batch_size,), generator=generator, device=device
            )
            return images[pick]
        mean = torch.rand(self.batch_size, 1, 1, 1, generator=generator, device=device) * 0.6 + 0.2
        std = torch.rand(self.batch_size, 1, 1, 1, generator=generator, device=device) * 0.25 + 0.05
        noise = torch.randn(self.batch_size, *shape, generator=generator, device=device)
        return (mean + std * noise).clamp(0, 1)

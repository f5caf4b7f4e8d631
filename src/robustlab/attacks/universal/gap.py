"""GAP: generative adversarial perturbations (Poursaeed et al., 2018), universal, untargeted.

A small generator maps a fixed noise tensor z to a perturbation, scaled onto
the ξ ball (ℓ∞: ξ · tanh; ℓ2: rescaled to norm ξ). It is trained with Adam to
minimise −log(1 − p_clean(x + G(z))), the probability the model still gives the
clean label, over mini-batches of images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.universal.base import (
    UNIVERSAL_ATTACKS,
    Norm,
    UniversalAttack,
    apply,
    scale_to_ball,
    shuffled_batches,
)
from robustlab.models.base import predict


class Generator(nn.Module):
    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(z)
        return out


@UNIVERSAL_ATTACKS.register()
class GAP(UniversalAttack):
    name = "gap"

    def __init__(
        self,
        model: nn.Module,
        xi: float = 10 / 255,
        norm: Norm = "linf",
        epochs: int = 5,
        batch_size: int = 32,
        lr: float = 2e-3,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(model, xi, norm, seed=seed)
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr

    def _scale(self, raw: torch.Tensor) -> torch.Tensor:
        return scale_to_ball(raw, self.xi, self.norm)

    def _generate(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
            torch.manual_seed(self.seed)
            net = Generator(images.shape[1]).to(images.device)
        z = torch.rand(images.shape[1:], generator=generator, device=images.device).unsqueeze(0)
        optimiser = torch.optim.Adam(net.parameters(), lr=self.lr)
        clean = predict(self.model, images).to(images.device)
        net.train()
        for _ in range(self.epochs):
            for batch in shuffled_batches(len(images), self.batch_size, generator, images.device):
                delta = self._scale(net(z))[0]
                probs = F.softmax(self.model(apply(images[batch], delta)), dim=1)
                still = probs.gather(1, clean[batch, None]).squeeze(1)
                loss = -torch.log((1 - still).clamp_min(1e-12)).mean()
                optimiser.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
        net.eval()
        with torch.no_grad():
            return self._scale(net(z))[0]

"""NAG: Network for Adversary Generation (Mopuri, Ojha, Garg & Babu 2018, CVPR).

A generator G maps latent vectors z ~ U(−1, 1)^d to perturbations on the ξ ball
(ℓ∞: ξ·tanh; ℓ2: rescaled to norm ξ). It is trained with Adam on mini-batches, each image
x_i with its own perturbation G(z_i), to minimise

    L = −(1/B) Σ_i log(1 − p_{c_i}(x_i + G(z_i)))                       (fooling)
        − λ (1/B) Σ_i ‖f(x_i + G(z_i)) − f(x_i + G(z_{π(i)}))‖₂          (diversity)

where c_i is the clean prediction, p the softmax, f the model's logits (the paper uses a
deep feature layer) and π a shift of the batch: the diversity term keeps the generator
from collapsing onto one perturbation. The result is the sample of ``samples`` seeded
latents that fools most of the images (NAG's output is the generator; a universal
perturbation protocol needs one δ).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.universal.base import (
    UNIVERSAL_ATTACKS,
    Norm,
    UniversalAttack,
    apply,
    fooling_rate,
    scale_to_ball,
    shuffled_batches,
)
from robustlab.models.base import predict


class LatentGenerator(nn.Module):
    """z (B, d) → raw perturbations (B, C, H, W): a linear map to a quarter-size grid, two
    transposed convolutions, and a resize to the image size."""

    def __init__(self, latent: int, shape: tuple[int, int, int], width: int = 32) -> None:
        super().__init__()
        channels, height, width_px = shape
        self.shape, self.side = shape, (math.ceil(height / 4), math.ceil(width_px / 4))
        self.width = width
        self.project = nn.Linear(latent, width * self.side[0] * self.side[1])
        self.up = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        grid = self.project(z).view(len(z), self.width, *self.side)
        out = self.up(grid)
        resized: torch.Tensor = F.interpolate(out, size=self.shape[1:], mode="bilinear")
        return resized


@UNIVERSAL_ATTACKS.register()
class NAG(UniversalAttack):
    """Generator of perturbations trained for fooling and diversity; returns its best sample."""

    name = "nag"

    def __init__(
        self,
        model: nn.Module,
        xi: float = 10 / 255,
        norm: Norm = "linf",
        epochs: int = 5,
        batch_size: int = 32,
        lr: float = 1e-3,
        diversity: float = 1.0,
        latent: int = 10,
        samples: int = 8,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(model, xi, norm, seed=seed)
        if min(epochs, batch_size, latent, samples) < 1 or lr <= 0 or diversity < 0:
            raise ValueError(
                "nag: need epochs, batch_size, latent, samples >= 1, lr > 0 and diversity >= 0"
            )
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.diversity, self.latent, self.samples = float(diversity), int(latent), int(samples)

    def _scale(self, raw: torch.Tensor) -> torch.Tensor:
        return scale_to_ball(raw, self.xi, self.norm)

    def _generate(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shape = (images.shape[1], images.shape[2], images.shape[3])
        with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
            torch.manual_seed(self.seed)
            net = LatentGenerator(self.latent, shape).to(images.device)
        optimiser = torch.optim.Adam(net.parameters(), lr=self.lr)
        clean = predict(self.model, images).to(images.device)
        net.train()
        for _ in range(self.epochs):
            for batch in shuffled_batches(len(images), self.batch_size, generator, images.device):
                z = self._latents(len(batch), generator, images.device)
                delta = self._scale(net(z))
                logits = self.model(apply(images[batch], delta))
                still = F.softmax(logits, dim=1).gather(1, clean[batch, None]).squeeze(1)
                fool = -torch.log((1 - still).clamp_min(1e-12)).mean()
                swapped = self.model(apply(images[batch], delta.roll(1, dims=0)))
                spread = (logits - swapped).flatten(1).norm(dim=1).mean()
                loss = fool - self.diversity * spread
                optimiser.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
        net.eval()
        with torch.no_grad():
            candidates = self._scale(net(self._latents(self.samples, generator, images.device)))
        rates = [fooling_rate(self.model, images, d) for d in candidates]
        return candidates[max(range(len(rates)), key=rates.__getitem__)]

    def _latents(
        self, count: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        return torch.rand(count, self.latent, generator=generator, device=device) * 2 - 1

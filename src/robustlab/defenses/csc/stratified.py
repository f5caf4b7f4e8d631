"""Stratified CSC: one dictionary per image cluster.

Images are clustered in the latent space of a small denoising autoencoder
(64 × 64 inputs, three conv-BN-ReLU-pool stages, a mirrored decoder, Gaussian
input noise σ = 0.15), reduced by PCA to 128 dimensions and split by k-means.
Each cluster gets its own dictionary; at purification time an image is
assigned to the nearest k-means centre and reconstructed with that cluster's
dictionary.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from torch import nn

CLUSTER_SIZE = 64  # the autoencoder's input resolution


def _stage(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DenoisingAutoencoder(nn.Module):
    """Encoder 3 × (conv-BN-ReLU-pool) to an 8 × 8 latent map; mirrored decoder."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        widths = [channels, width, 2 * width, 4 * width]
        encoder: list[nn.Module] = []
        for cin, cout in itertools.pairwise(widths):
            encoder += [*_stage(cin, cout), nn.MaxPool2d(2)]
        decoder: list[nn.Module] = []
        for cin, cout in itertools.pairwise(widths[:0:-1]):
            decoder += [nn.Upsample(scale_factor=2), *_stage(cin, cout)]
        decoder += [nn.Upsample(scale_factor=2), nn.Conv2d(width, channels, 3, padding=1)]
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Flattened latent codes of [0, 1] images of any size (resized to 64 × 64)."""
        latent: torch.Tensor = self.encoder(resize(images))
        return latent.flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encoder(images)))


def resize(images: torch.Tensor) -> torch.Tensor:
    if images.shape[-1] == CLUSTER_SIZE and images.shape[-2] == CLUSTER_SIZE:
        return images
    return F.interpolate(
        images, size=(CLUSTER_SIZE, CLUSTER_SIZE), mode="bilinear", align_corners=False
    )


def train_autoencoder(
    images: torch.Tensor, epochs: int = 5, noise: float = 0.15, batch_size: int = 64, seed: int = 0
) -> DenoisingAutoencoder:
    """Train to reconstruct clean 64 × 64 images from noisy ones (MSE)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DenoisingAutoencoder(images.shape[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            clean = resize(images[order[start : start + batch_size]])
            noisy = (clean + noise * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
            loss = F.mse_loss(model(noisy), clean)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
    return model.eval()


@dataclass
class ClusterModel:
    """Autoencoder + PCA + k-means centres: assigns images to clusters."""

    autoencoder: DenoisingAutoencoder
    pca_mean: torch.Tensor  # (L,)
    pca_components: torch.Tensor  # (K, L)
    centres: torch.Tensor  # (k, K)

    @torch.no_grad()
    def assign(self, images: torch.Tensor) -> torch.Tensor:
        """Index of the nearest centre for each image, shape (B,)."""
        self.autoencoder.eval()
        latent = self.autoencoder.encode(images.float().cpu())
        reduced = (latent - self.pca_mean) @ self.pca_components.T
        return torch.cdist(reduced, self.centres).argmin(dim=1).to(images.device)

    def tensors(self) -> dict[str, torch.Tensor]:
        state = {f"autoencoder.{k}": v for k, v in self.autoencoder.state_dict().items()}
        return {
            **state,
            "pca_mean": self.pca_mean,
            "pca_components": self.pca_components,
            "centres": self.centres,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], channels: int) -> ClusterModel:
        autoencoder = DenoisingAutoencoder(channels)
        prefix = "autoencoder."
        autoencoder.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        return cls(
            autoencoder.eval(), tensors["pca_mean"], tensors["pca_components"], tensors["centres"]
        )


def fit_clusters(
    images: torch.Tensor,
    clusters: int = 4,
    components: int = 128,
    epochs: int = 5,
    seed: int = 0,
) -> ClusterModel:
    """Train the autoencoder on ``images`` and fit PCA + k-means on their latent codes."""
    autoencoder = train_autoencoder(images, epochs=epochs, seed=seed)
    with torch.no_grad():
        codes = [autoencoder.encode(chunk) for chunk in torch.split(images, 256)]
    latent = torch.cat(codes).numpy()
    components = min(components, *latent.shape)
    pca = PCA(n_components=components, random_state=seed).fit(latent)
    reduced = pca.transform(latent)
    kmeans = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit(reduced)
    return ClusterModel(
        autoencoder,
        torch.from_numpy(pca.mean_.astype(np.float32)),
        torch.from_numpy(pca.components_.astype(np.float32)),
        torch.from_numpy(kmeans.cluster_centers_.astype(np.float32)),
    )

"""Seeded mini-batches built on tensors, with the paper's augmentation done batch-wise.

Images stay uint8 until a batch is drawn; the batch is moved to the device, scaled to
[0, 1] and augmented there (random crop after zero padding, horizontal flip), so the
same code is fast on CPU and CUDA and needs no worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from robustlab.data.datasets import Dataset


@dataclass(frozen=True)
class Augment:
    """Training augmentation: ``pad``-pixel zero padding then a random crop, and flips."""

    pad: int = 4
    flip: bool = True


def augment(x: torch.Tensor, spec: Augment, generator: torch.Generator) -> torch.Tensor:
    """Randomly crop and flip a batch (N, C, H, W); one draw per example from ``generator``."""
    n, _, h, w = x.shape
    if spec.pad > 0:
        padded = torch.nn.functional.pad(x, (spec.pad,) * 4)
        dy = torch.randint(0, 2 * spec.pad + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * spec.pad + 1, (n,), generator=generator).to(x.device)
        rows = (torch.arange(h, device=x.device) + dy[:, None])[:, None, :, None]
        cols = (torch.arange(w, device=x.device) + dx[:, None])[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, channel, rows, cols]
    if spec.flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def _to_device(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """Copy to ``device``; through pinned memory for CUDA, so the copy overlaps compute."""
    if torch.device(device).type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def batches(
    data: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    augmentation: Augment | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (pixels in [0, 1], labels) batches on ``device``.

    The order and the augmentation depend only on ``seed`` (draw from a CPU
    generator), so a run is reproducible and an epoch can be replayed on resume.
    """
    generator = torch.Generator().manual_seed(seed)
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    images = torch.from_numpy(data.images)
    labels = torch.from_numpy(data.labels)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        x = _to_device(images[idx], device).float().div_(255)
        if augmentation is not None:
            x = augment(x, augmentation, generator)
        yield x, _to_device(labels[idx], device)

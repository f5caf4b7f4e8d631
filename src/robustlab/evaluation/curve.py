"""Robust accuracy as a function of ε from one bisection per image (Foolbox's success per ε).

Instead of one attack run per ε of the curve, find for each image an upper bound ε* on the
smallest ℓ∞ budget at which APGD-CE (through the defense's attack view) breaks it:

1. attack every correctly classified image at ε_max; those that survive have ε* = ∞;
2. bisect the bracket [lo, hi] = [0, ε_max] of each broken image ``search_steps`` times,
   attacking all images at once (grouped by their midpoint).

After s bisections hi − lo = ε_max / 2^s, and both are multiples of that resolution. For
an ε of the curve that is such a multiple, an image is robust at ε exactly when ε < ε*
(assuming, as every curve of the field does, that an attack that succeeds at ε succeeds
at any larger ε). Misclassified clean images have ε* = 0. Cost: (1 + s) attack runs per
image instead of one per ε, and images broken at ε_max only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustlab.attacks.adversarial_set import attack_in_batches
from robustlab.attacks.base import Params
from robustlab.defenses.base import attack_view
from robustlab.evaluation.adaptive import BATCH
from robustlab.evaluation.stats import Rate
from robustlab.io import atomic_write
from robustlab.models.base import predict


@dataclass(frozen=True)
class EpsilonSearch:
    """Settings of the bisection; ε values in [0, 1] pixel units."""

    eps_max: float = 32 / 255
    search_steps: int = 5
    steps: int = 20  # APGD steps per attack run

    @property
    def resolution(self) -> float:
        return float(self.eps_max / 2**self.search_steps)


def smallest_eps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, search: EpsilonSearch, *, seed: int = 0
) -> torch.Tensor:
    """ε* per image (float64, [0, 1] units; 0: misclassified clean, inf: survives ε_max)."""
    labels = y.cpu()
    view = attack_view(model)
    hi = torch.full((len(labels),), float("inf"), dtype=torch.float64)
    lo = torch.zeros_like(hi)
    correct = predict(model, x) == labels
    hi[~correct] = 0.0

    def broken(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Which images ``rows`` APGD-CE breaks at their own ``eps``."""
        out = torch.zeros(len(rows), dtype=torch.bool)
        for value in torch.unique(eps):
            group = eps == value
            picked = rows[group]
            params: Params = {"eps": float(value), "steps": search.steps}
            adv = attack_in_batches(
                "apgd", view, params, x[picked], y[picked], seed=seed, batch_size=BATCH
            ).adv
            out[group] = predict(model, adv) != labels[picked]
        return out

    todo = correct.nonzero().squeeze(1)
    at_max = broken(todo, torch.full((len(todo),), search.eps_max, dtype=torch.float64))
    active = todo[at_max]
    hi[active] = search.eps_max
    for _ in range(search.search_steps):
        if len(active) == 0:
            break
        mid = (lo[active] + hi[active]) / 2
        hit = broken(active, mid)
        hi[active[hit]], lo[active[~hit]] = mid[hit], mid[~hit]
    return hi


def accuracy_at(eps_star: torch.Tensor, levels: Sequence[float]) -> dict[float, Rate]:
    """Robust accuracy at each ε of ``levels`` ([0, 1] units): images with ε < ε*."""
    n = len(eps_star)
    return {level: Rate(int((eps_star > level + 1e-12).sum()), n) for level in levels}


def save_success(
    path: Path, eps_star: torch.Tensor, levels_255: Sequence[float], indices: np.ndarray
) -> None:
    """Foolbox's ``success[eps_index, image]`` for the curve's ε (0-255) as ``.npz``, with
    ε* per image (0-255 units; inf where ε_max did not suffice) and the dataset indices."""
    eps = np.asarray(levels_255, dtype=np.float64)
    star = eps_star.numpy() * 255
    success = star[None, :] <= eps[:, None] + 1e-9
    with atomic_write(path, "wb") as handle:
        np.savez(handle, success=success, eps=eps, smallest_eps=star, indices=indices)

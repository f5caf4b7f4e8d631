"""The Defective-CNN paper's measurements beyond transfer, each on in-memory batches: white-box
accuracy, Gaussian noise, the patch-shuffle probe and the decision-based score (the protocols
in :mod:`robustlab.evaluation.protocols` run them on a spec's models).

Every function returns :class:`~robustlab.evaluation.stats.Rate` values (or medians) with
the counts they were computed from, so a record always says what n it rests on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from typing_extensions import TypedDict

from robustlab.attacks import build as build_attack
from robustlab.attacks.adversarial_set import attack_in_batches
from robustlab.attacks.base import Params
from robustlab.attacks.distances import mse
from robustlab.evaluation.stats import Rate
from robustlab.models.base import predict

# Attacks inside protocols run in batches of this size, each seeded by its position, so
# that torch.distributed can share them among processes with unchanged results.
BATCH = 64


def correct_by_all(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mask of the examples every model classifies correctly (noise and shuffle protocols)."""
    keep = torch.ones(len(y), dtype=torch.bool)
    for model in models:
        keep &= predict(model, x) == y.cpu()
    return keep


def whitebox_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: str,
    params: Params,
    seed: int = 0,
) -> Rate:
    """Accuracy of ``model`` on adversarial examples computed against ``model`` itself."""
    adv = attack_in_batches(attack, model, dict(params), x, y, seed=seed, batch_size=BATCH).adv
    return Rate(int((predict(model, adv) == y.cpu()).sum()), len(y))


def noise_curve(
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sigmas: Sequence[float],
    seed: int = 0,
) -> dict[str, dict[float, Rate]]:
    """Accuracy under additive Gaussian noise of each σ (0-255 units), on images all models
    classify correctly when clean; every model sees the same noisy images."""
    keep = correct_by_all(list(models.values()), x, y)
    x, y = x[keep], y[keep]
    reference = next(iter(models.values()))
    curve: dict[str, dict[float, Rate]] = {name: {} for name in models}
    for sigma in sigmas:
        noisy = build_attack("noise", reference, sigma=float(sigma), seed=seed)(x, y)
        for name, model in models.items():
            curve[name][sigma] = Rate(int((predict(model, noisy) == y.cpu()).sum()), len(y))
    return curve


def patch_shuffle(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Cut each image into a k×k grid of patches and permute the patches (one permutation per
    image): local texture survives, global shape does not. Sizes not divisible by k are
    cropped to the largest multiple of k."""
    n, c, h, w = x.shape
    ph, pw = h // k, w // k
    patches = x[:, :, : ph * k, : pw * k].reshape(n, c, k, ph, k, pw).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(n, k * k, c, ph, pw)
    order = torch.stack([torch.randperm(k * k, generator=generator) for _ in range(n)]).to(x.device)
    shuffled = patches[torch.arange(n, device=x.device)[:, None], order]
    shuffled = (
        shuffled.reshape(n, k, k, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, ph * k, pw * k)
    )
    out = x.clone()
    out[:, :, : ph * k, : pw * k] = shuffled
    return out


def shuffle_probe(
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    ks: Sequence[int] = (2, 4, 8),
    seed: int = 0,
) -> dict[str, dict[int, Rate]]:
    """Accuracy on patch-shuffled images (the paper's Table 1 shape probe), on images all
    models classify correctly; a shape-biased model loses more accuracy."""
    keep = correct_by_all(list(models.values()), x, y)
    x, y = x[keep], y[keep]
    result: dict[str, dict[int, Rate]] = {name: {} for name in models}
    for k in ks:
        shuffled = patch_shuffle(x, k, torch.Generator().manual_seed(seed))
        for name, model in models.items():
            result[name][k] = Rate(int((predict(model, shuffled) == y.cpu()).sum()), len(y))
    return result


class DecisionFields(TypedDict, closed=True):
    """A :class:`DecisionResult` as records store it."""

    score: float
    n: int
    failed: int
    median_queries: float | None


@dataclass(frozen=True)
class DecisionResult:
    """The Boundary attack's S(M) on ``n`` correctly classified images: the median of
    ‖δ‖²/N (``inf`` when more than half failed; NaN for no image), the images it ``failed``
    on and the median number of queries."""

    score: float
    n: int
    failed: int
    median_queries: float | None

    def to_dict(self) -> DecisionFields:
        return {
            "score": self.score,
            "n": self.n,
            "failed": self.failed,
            "median_queries": self.median_queries,
        }


def decision_score(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    params: Params,
    seed: int = 0,
) -> DecisionResult:
    """S(M): the median over images of ‖δ‖²/N of Boundary-attack adversarials (paper Table 4).

    Computed on images the model classifies correctly; failures (no adversarial found) are
    reported, and count as infinitely far in the median.
    """
    keep = predict(model, x) == y.cpu()
    x, y = x[keep], y[keep]
    result = attack_in_batches("boundary", model, dict(params), x, y, seed=seed, batch_size=BATCH)
    fooled = predict(model, result.adv) != y.cpu()
    distance = torch.where(fooled, mse(x.cpu(), result.adv.cpu()), torch.tensor(float("inf")))
    queries = result.queries
    return DecisionResult(
        score=float(distance.median()) if len(distance) else float("nan"),
        n=len(y),
        failed=int((~fooled).sum()),
        median_queries=float(queries.float().median()) if queries is not None else None,
    )

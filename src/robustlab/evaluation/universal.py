"""The universal-perturbation protocol: fooling rate and restoration accuracy (SFR paper).

One perturbation δ (ℓ∞ ≤ ξ) is added to every test image. For a model M with undefended
base B (B = M for an undefended model):

- fooling rate: share of images whose prediction by M changes when δ is added;
- restoration accuracy (Borkar et al. 2020): (top-1 of M on clean + top-1 of M on
  perturbed images) / (2 × top-1 of B on clean images); 1 means every image B classified
  correctly is classified correctly by M, perturbed or not.

Its interval is the Wilson interval of the pooled hits (clean + perturbed, out of 2n)
divided by B's clean accuracy, which it treats as fixed: a slight under-statement of the
uncertainty, named in the record.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from typing_extensions import TypedDict

from robustlab.attacks.universal import apply
from robustlab.evaluation.stats import Rate, RateRecord
from robustlab.models.base import predict


class RestorationRecord(TypedDict):
    """The restoration accuracy with its interval (module docstring)."""

    rate: float
    low: float
    high: float
    n: int
    interval: str  # how the interval was made


class UniversalFields(TypedDict, closed=True):
    """A :class:`UniversalResult` as records store it."""

    fooling_rate: RateRecord
    clean_accuracy: RateRecord
    perturbed_accuracy: RateRecord
    base_clean_accuracy: RateRecord
    restoration: RestorationRecord
    linf: float


@dataclass(frozen=True)
class UniversalResult:
    fooling_rate: Rate
    clean_accuracy: Rate
    perturbed_accuracy: Rate
    base_clean_accuracy: Rate
    linf: float

    @property
    def restoration(self) -> float:
        pooled = self.clean_accuracy.hits + self.perturbed_accuracy.hits
        return pooled / (2 * max(1, self.base_clean_accuracy.hits))

    def to_dict(self) -> UniversalFields:
        pooled = Rate(
            self.clean_accuracy.hits + self.perturbed_accuracy.hits, 2 * self.clean_accuracy.n
        )
        base = max(self.base_clean_accuracy.value, 1e-12)
        low, high = pooled.interval
        return {
            "fooling_rate": self.fooling_rate.to_dict(),
            "clean_accuracy": self.clean_accuracy.to_dict(),
            "perturbed_accuracy": self.perturbed_accuracy.to_dict(),
            "base_clean_accuracy": self.base_clean_accuracy.to_dict(),
            "restoration": {
                "rate": self.restoration,
                "low": low / base,
                "high": high / base,
                "n": self.clean_accuracy.n,
                "interval": "pooled Wilson / base clean accuracy",
            },
            "linf": self.linf,
        }


def universal_scores(
    model: nn.Module, base: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor
) -> UniversalResult:
    """Score ``model`` (and its undefended ``base``) on images ``x`` with ``delta`` added."""
    labels = y.cpu()
    clean = predict(model, x)
    perturbed = predict(model, apply(x, delta.to(x.device)))
    base_clean = clean if base is model else predict(base, x)
    n = len(labels)
    return UniversalResult(
        fooling_rate=Rate(int((clean != perturbed).sum()), n),
        clean_accuracy=Rate(int((clean == labels).sum()), n),
        perturbed_accuracy=Rate(int((perturbed == labels).sum()), n),
        base_clean_accuracy=Rate(int((base_clean == labels).sum()), n),
        linf=float(delta.abs().max()),
    )

"""Predictions, clean accuracy and inference cost, batched, with the model in eval mode."""

from __future__ import annotations

import time

import torch
from torch import nn
from typing_extensions import TypedDict

from robustlab.defenses.base import added_parameters
from robustlab.evaluation.stats import Rate, RateRecord
from robustlab.models.base import accuracy, eval_mode, model_device, predict
from robustlab.models.cost import Meter, counted

__all__ = ["accuracy", "model_device", "predict"]


def ms_per_image(model: nn.Module, x: torch.Tensor, count: int = 64) -> float:
    """Wall-clock milliseconds per image of a forward pass (batch of ``count``, after a
    warm-up on two images): measured where the run runs, so only ratios travel."""
    batch = x[:count].to(model_device(model))
    with torch.no_grad(), eval_mode(model):
        model(batch[:2])
        start = time.perf_counter()
        model(batch)
        return 1000 * (time.perf_counter() - start) / max(1, len(batch))


def passes_per_image(model: nn.Module, x: torch.Tensor, count: int = 16) -> float:
    """Network passes per predicted image, counted (:mod:`robustlab.models.cost`): 1 for a
    plain model, the EOT samples of a randomized defense, the members of an ensemble."""
    batch = x[:count]
    with Meter() as cost:
        predict(model, batch)
    return cost.forward / max(1, len(batch))


class SummaryFields(TypedDict, closed=True):
    """:func:`summary` as the comparison table's records store it."""

    clean_accuracy: RateRecord
    ms_per_image: float
    cost_ratio: float | None  # None for an undefended model (its own base)
    passes_per_image: float
    passes_ratio: float | None
    added_parameters: int


def summary(model: nn.Module, base: nn.Module, x: torch.Tensor, y: torch.Tensor) -> SummaryFields:
    """The comparison table's own cell of a model: clean accuracy on ``x``, inference cost
    (ms/image and network passes per image, each with its ratio to the undefended ``base``)
    and the parameters a defense adds."""
    clean = Rate(int((predict(model, x) == y.cpu()).sum()), len(y))
    ms, passes = ms_per_image(model, x), passes_per_image(counted(model), x)
    return {
        "clean_accuracy": clean.to_dict(),
        "ms_per_image": ms,
        "cost_ratio": ms / ms_per_image(base, x) if base is not model else None,
        "passes_per_image": passes,
        "passes_ratio": passes / passes_per_image(counted(base), x) if base is not model else None,
        "added_parameters": added_parameters(model, base),
    }

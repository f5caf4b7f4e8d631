"""Predictions, clean accuracy and inference cost, batched, with the model in eval mode."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from robustlab.data import Dataset, batches
from robustlab.defenses.base import added_parameters
from robustlab.evaluation.stats import Rate
from robustlab.models.base import eval_mode, model_device, predict

__all__ = ["accuracy", "model_device", "predict"]


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``data``."""
    correct = 0
    with eval_mode(model):
        for x, y in batches(data, batch_size, device=model_device(model)):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / max(1, len(data))


def ms_per_image(model: nn.Module, x: torch.Tensor, count: int = 64) -> float:
    """Wall-clock milliseconds per image of a forward pass (batch of ``count``, after a
    warm-up on two images): measured where the run runs, so only ratios travel."""
    batch = x[:count].to(model_device(model))
    with torch.no_grad(), eval_mode(model):
        model(batch[:2])
        start = time.perf_counter()
        model(batch)
        return 1000 * (time.perf_counter() - start) / max(1, len(batch))


def summary(model: nn.Module, base: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """The comparison table's own cell of a model: clean accuracy on ``x``, inference cost
    (ms/image and its ratio to the undefended ``base``) and the parameters a defense adds."""
    clean = Rate(int((predict(model, x) == y.cpu()).sum()), len(y))
    ms = ms_per_image(model, x)
    return {
        "clean_accuracy": clean.to_dict(),
        "ms_per_image": ms,
        "cost_ratio": ms / ms_per_image(base, x) if base is not model else None,
        "added_parameters": added_parameters(model, base),
    }

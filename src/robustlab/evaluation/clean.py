"""Predictions and clean accuracy, batched, with the model in eval mode."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.data import Dataset, batches
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

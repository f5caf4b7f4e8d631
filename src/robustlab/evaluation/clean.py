"""Predictions and clean accuracy, batched, with the model in eval mode."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.data import Dataset, batches
from robustlab.models.base import eval_mode


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a module with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels (on the CPU) for pixels ``x``, computed on the model's device."""
    device = model_device(model)
    with eval_mode(model):
        preds = [
            model(x[i : i + batch_size].to(device)).argmax(1).cpu()
            for i in range(0, len(x), batch_size)
        ]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``data``."""
    correct = 0
    with eval_mode(model):
        for x, y in batches(data, batch_size, device=model_device(model)):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / max(1, len(data))

"""Distances between clean and adversarial batches, one value per example."""

from __future__ import annotations

import torch


def _flat(x: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    return (adv - x).flatten(1)


def linf(x: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """max |adv − x| per example."""
    return _flat(x, adv).abs().amax(1)


def l2(x: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """‖adv − x‖₂ per example."""
    return _flat(x, adv).square().sum(1).sqrt()


def mse(x: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """‖adv − x‖₂² / N per example (N pixels × channels): the paper's S(M) takes its median."""
    return _flat(x, adv).square().mean(1)

"""Transfer evaluation: adversarial examples made on a source, shown to a target.

The success defense rate (the Defective-CNN paper, appendix A.7) is the target's accuracy
on adversarial examples, counted only over examples that (a) the target classifies
correctly when clean and (b) fooled the source. The unfiltered accuracy (the paper's
Table 2 metric) counts every example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from robustlab.attacks.adversarial_set import AdversarialSet
from robustlab.evaluation.stats import Rate
from robustlab.models.base import predict


@dataclass(frozen=True)
class TransferResult:
    """A target's result on one adversarial set."""

    defense_rate: Rate  # filtered: clean-correct on the target and fooled the source
    accuracy: Rate  # unfiltered accuracy on all adversarial examples
    clean_accuracy: Rate  # the target's accuracy on the same clean images

    def to_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k).to_dict() for k in ("defense_rate", "accuracy", "clean_accuracy")
        }


def transfer(
    target: nn.Module, adv_set: AdversarialSet, clean: torch.Tensor, batch_size: int = 256
) -> TransferResult:
    """Evaluate ``target`` on ``adv_set``; ``clean`` are the set's clean images (same order)."""
    if len(clean) != len(adv_set):
        raise ValueError(f"{len(clean)} clean images for an adversarial set of {len(adv_set)}")
    labels = adv_set.labels
    clean_correct = predict(target, clean, batch_size).numpy() == labels
    adv_correct = predict(target, adv_set.pixels(), batch_size).numpy() == labels
    counted = clean_correct & adv_set.fooled_source
    return TransferResult(
        defense_rate=Rate(int(np.sum(adv_correct & counted)), int(np.sum(counted))),
        accuracy=Rate(int(np.sum(adv_correct)), len(labels)),
        clean_accuracy=Rate(int(np.sum(clean_correct)), len(labels)),
    )

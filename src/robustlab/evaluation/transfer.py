"""Transfer evaluation: adversarial examples made on a source, shown to a target.

The success defense rate (the Defective-CNN paper, appendix A.7) is the target's accuracy
on adversarial examples, counted only over examples that (a) the target classifies
correctly when clean and (b) fooled the source. The unfiltered accuracy (the paper's
Table 2 metric) counts every example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from typing_extensions import TypedDict

from robustlab.attacks.adversarial_set import AdversarialSet
from robustlab.evaluation.stats import Rate, RateRecord
from robustlab.io import RobustlabError
from robustlab.models.base import predict


class TransferFields(TypedDict, closed=True):
    """A :class:`TransferResult` as records store it."""

    defense_rate: RateRecord
    accuracy: RateRecord
    clean_accuracy: RateRecord


@dataclass(frozen=True)
class TransferResult:
    """A target's result on one adversarial set."""

    defense_rate: Rate  # filtered: clean-correct on the target and fooled the source
    accuracy: Rate  # unfiltered accuracy on all adversarial examples
    clean_accuracy: Rate  # the target's accuracy on the same clean images

    def to_dict(self) -> TransferFields:
        return {
            "defense_rate": self.defense_rate.to_dict(),
            "accuracy": self.accuracy.to_dict(),
            "clean_accuracy": self.clean_accuracy.to_dict(),
        }


def transfer(
    target: nn.Module,
    adv_set: AdversarialSet,
    clean: torch.Tensor,
    batch_size: int = 256,
    *,
    labels: torch.Tensor | None = None,
) -> TransferResult:
    """Evaluate ``target`` on ``adv_set``; ``clean`` are the set's clean images (same order)
    and ``labels`` their true labels: a set that does not fit them (another dataset, image
    size or subset, edited labels) is refused instead of scored."""
    if len(clean) != len(adv_set):
        raise ValueError(f"{len(clean)} clean images for an adversarial set of {len(adv_set)}")
    where = adv_set.path or "the adversarial set"
    if tuple(adv_set.images.shape[1:]) != tuple(clean.shape[1:]):
        raise RobustlabError(
            f"{where}: images of shape {tuple(adv_set.images.shape[1:])}, the data "
            f"{tuple(clean.shape[1:])}; re-generate the set on this dataset (or delete it)"
        )
    if labels is not None and not np.array_equal(adv_set.labels, labels.cpu().numpy()):
        raise RobustlabError(
            f"{where}: its labels are not those of its images in the dataset; re-generate "
            "the set (or delete it: robustlab run remakes it)"
        )
    truth = adv_set.labels
    clean_correct = predict(target, clean, batch_size).numpy() == truth
    adv_correct = predict(target, adv_set.pixels(), batch_size).numpy() == truth
    counted = clean_correct & adv_set.fooled_source
    return TransferResult(
        defense_rate=Rate(int(np.sum(adv_correct & counted)), int(np.sum(counted))),
        accuracy=Rate(int(np.sum(adv_correct)), len(truth)),
        clean_accuracy=Rate(int(np.sum(clean_correct)), len(truth)),
    )

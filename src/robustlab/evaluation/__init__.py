"""Evaluation protocols on in-memory batches: clean accuracy, transfer, the paper's
protocols (``protocols``), adaptive white-box (``adaptive``), the strong worst case
(``strong``), robust accuracy against ε (``curve``) and universal perturbations
(``universal``). Every rate carries its n and a Wilson interval (``stats``)."""

from robustlab.evaluation.clean import accuracy, predict
from robustlab.evaluation.curve import EpsilonSearch, accuracy_at, smallest_eps
from robustlab.evaluation.stats import Rate, wilson_interval
from robustlab.evaluation.strong import StrongConfig, StrongResult, strong_attack
from robustlab.evaluation.transfer import TransferResult, transfer

__all__ = [
    "EpsilonSearch",
    "Rate",
    "StrongConfig",
    "StrongResult",
    "TransferResult",
    "accuracy",
    "accuracy_at",
    "predict",
    "smallest_eps",
    "strong_attack",
    "transfer",
    "wilson_interval",
]

"""Evaluation protocols: clean accuracy, transfer (more in the evaluation issue)."""

from robustlab.evaluation.clean import accuracy, predict
from robustlab.evaluation.stats import Rate, wilson_interval
from robustlab.evaluation.transfer import TransferResult, transfer

__all__ = ["Rate", "TransferResult", "accuracy", "predict", "transfer", "wilson_interval"]

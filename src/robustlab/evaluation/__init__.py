"""Evaluation protocols; for now clean predictions and accuracy."""

from robustlab.evaluation.clean import accuracy, predict

__all__ = ["accuracy", "predict"]

"""A run's ``meta.json`` as typed records: what :mod:`robustlab.runs` writes and reads.

Plain data beside the networks (no training code): the training loop fills them,
:func:`robustlab.runs.read_meta` checks the keys every reader needs.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from robustlab.models.config import ModelRecord

# a TrainConfig as meta.json stores it: numbers and names, the milestones a list
TrainRecord = dict[str, bool | int | float | str | list[int] | None]


class EpochStats(TypedDict):
    """One epoch of a run's ``history`` (meta.json and the training state keep them)."""

    epoch: int
    lr: float  # at the epoch's start
    lr_end: float  # at its last step
    train_loss: float
    train_accuracy: float
    seconds: float
    test_accuracy: NotRequired[float]  # added once the epoch is evaluated


class DatasetMeta(TypedDict, total=False):
    """What a run records of its training data (and a caller may add to)."""

    name: str
    data_dir: str | None
    classes: list[str]
    train_limit: int | None  # the images it was trained and tested on, if not all
    test_limit: int | None


class RunMeta(TypedDict, total=False):
    """A run's ``meta.json`` (format ``robustlab-run/1``; :mod:`robustlab.runs` checks the
    keys every reader needs when it reads one)."""

    format: str
    version: str
    model: ModelRecord
    dataset: DatasetMeta
    train: TrainRecord
    history: list[EpochStats]
    epoch: int
    complete: bool
    test_accuracy: float
    fast_path: dict[str, bool]
    imported: dict[str, str]  # a model trained elsewhere: its weights file and their hash

"""The records of a training run: its recipe (:class:`TrainConfig`, with the learning-rate
schedules of :mod:`robustlab.training`) and the speed options that leave it unchanged
(:class:`FastPath`). Plain data, so that training-time defenses can edit a recipe without
depending on the training loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from robustlab.models.meta import TrainRecord

SCHEDULES = ("paper", "cosine", "onecycle")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults are the paper's CIFAR-10 recipe.

    ``milestones`` default to the paper's 150 and 250 of 350 epochs, scaled to ``epochs``.
    ``adv_eps`` > 0 turns on adversarial training (Madry et al. 2018): every batch is
    replaced by its PGD adversarial (random start, ``adv_steps`` steps of ``adv_step``,
    pixels in [0, 1] units) against the current model.
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] | None = None
    gamma: float = 0.1
    label_smoothing: float = 0.0
    pad: int = 4
    flip: bool = True
    seed: int = 0
    adv_eps: float = 0.0
    adv_step: float = 2 / 255
    adv_steps: int = 7
    schedule: str = "paper"

    def __post_init__(self) -> None:
        """Every parameter checked once, here (the spec and ``robustlab train`` both build a
        TrainConfig): NaN and infinities never reach a run's meta.json."""
        for name in (
            "lr",
            "momentum",
            "weight_decay",
            "gamma",
            "label_smoothing",
            "adv_eps",
            "adv_step",
        ):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} = {getattr(self, name)} must be a finite number")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0 or self.gamma <= 0:
            raise ValueError(
                f"need 0 <= momentum < 1, weight_decay >= 0 and gamma > 0 (got {self.momentum}, "
                f"{self.weight_decay}, {self.gamma})"
            )
        if self.pad < 0:
            raise ValueError(f"pad = {self.pad} must be 0 (no crop) or a positive number of pixels")
        if self.milestones is not None and (
            any(m < 1 for m in self.milestones)
            or list(self.milestones) != sorted(set(self.milestones))
        ):
            raise ValueError(
                f"milestones {list(self.milestones)} must be increasing positive epochs, e.g. 3,4"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}"
            )
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if self.lr <= 0:
            raise ValueError(f"learning rate {self.lr} must be positive")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label smoothing {self.label_smoothing} must be in [0, 1)")

    def lr_at(self, epoch: int, fraction: float = 0.0) -> float:
        """Learning rate at step ``fraction`` ∈ [0, 1) of 0-based ``epoch`` (module docstring)."""
        if self.schedule == "paper":
            milestones = self.milestones
            if milestones is None:
                milestones = (round(self.epochs * 150 / 350), round(self.epochs * 250 / 350))
            return self.lr * self.gamma ** sum(epoch >= m for m in milestones if m > 0)
        t = (epoch + fraction) / self.epochs  # progress in [0, 1)
        if self.schedule == "cosine":
            warmup = 0.1
            if t < warmup:
                return self.lr * max(t / warmup, 1 / 25)
            return self.lr * (1 + math.cos(math.pi * (t - warmup) / (1 - warmup))) / 2
        start, end, peak = self.lr / 25, self.lr / 25 / 1e4, 0.3  # onecycle
        if t < peak:
            return start + (self.lr - start) * (1 - math.cos(math.pi * t / peak)) / 2
        return end + (self.lr - end) * (1 + math.cos(math.pi * (t - peak) / (1 - peak))) / 2

    def to_dict(self) -> TrainRecord:
        data: TrainRecord = asdict(self)
        data["milestones"] = list(self.milestones) if self.milestones is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_dict` (a run's ``meta.json`` ``train``; keys of older
        versions that no longer exist are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("milestones") is not None:
            values["milestones"] = tuple(values["milestones"])
        return cls(**values)


@dataclass(frozen=True)
class FastPath:
    """Speed options that leave the recipe unchanged (so runs stay comparable and resumable).

    ``channels_last`` memory format and bf16 autocast pay off on GPUs with tensor
    cores; ``compile`` wraps the model in torch.compile (first epoch compiles).
    Attacks are not affected: they run in float32 unless asked otherwise (and channels-last
    on the CPU, :func:`robustlab.models.base.channels_last_pays`). ``channels_last`` training
    is refused on the CPU: there torch 2.13's channels-last weight gradients were not
    reproducible run to run.
    """

    channels_last: bool = False
    bf16: bool = False
    compile: bool = False

"""Training-time defenses: what is built into a model or its training recipe.

Each is a frozen dataclass config, like the wrapping defenses of :mod:`robustlab.defenses.base`,
with a ``name``, an attack :class:`~robustlab.defenses.base.Surface` and a ``describe``-d
config; where those wrap a trained model, these edit the model config (``on_model``) or the
training recipe (``on_recipe``) before training:

============================  ======================================  =====================
defense                       edits                                   attack surface
============================  ======================================  =====================
:class:`DefectMasks`          the model: fixed random neuron masks    exact gradients
:class:`SpatialDropout`       the model: dropout2d / DropBlock        exact (off in eval)
:class:`Thermometer`          the model: thermometer input encoding   BPDA (ramp per level)
:class:`LabelSmoothing`       the recipe: smoothed targets            exact gradients
:class:`AdversarialTraining`  the recipe: PGD examples per batch      exact gradients
============================  ======================================  =====================

The trained run is the defended model, saved like any run (safetensors + meta.json); its
configs record the defenses, and :func:`defenses_of` reads them back. Pixel quantities are in
[0, 1] units here (specs and the command line convert from 0-255 at their boundary).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from robustlab.defenses.base import THERMOMETER_SURFACE, BaseDefense, Surface
from robustlab.defenses.baselines import REGULARIZERS
from robustlab.models.config import DefectSpec, ModelConfig
from robustlab.registry import Registry
from robustlab.runs import model_config, read_meta
from robustlab.training.config import TrainConfig


class TrainingDefense(BaseDefense):
    """Base of the training-time defenses (subclasses are frozen dataclasses)."""

    kind = "training"

    def on_model(self, config: ModelConfig) -> ModelConfig:
        """The model config with this defense built in (default: unchanged)."""
        return config

    def on_recipe(self, recipe: TrainConfig) -> TrainConfig:
        """The training recipe with this defense in it (default: unchanged)."""
        return recipe

    @abstractmethod
    def text(self) -> str:
        """The defense in a few words, for tables."""


# a trained model's spec keys that name training-time defenses (mask_seed goes with defect)
TRAINING_DEFENSES: Registry[type[TrainingDefense]] = Registry("training-time defense")


@TRAINING_DEFENSES.register("defect")
@dataclass(frozen=True, repr=False)
class DefectMasks(TrainingDefense):
    """Defective CNN (Luo et al. 2019): fixed random masks zero a share of the neurons of
    the bottom convolutions; ``spec`` says which blocks, the keep rate and the mask seed."""

    spec: DefectSpec
    name = "defect"

    def on_model(self, config: ModelConfig) -> ModelConfig:
        return replace(config, defect=self.spec)

    def text(self) -> str:
        return f"defect {self.spec}"


@TRAINING_DEFENSES.register("regularizer")
@dataclass(frozen=True, repr=False)
class SpatialDropout(TrainingDefense):
    """Spatial dropout (``dropout2d``, Tompson et al. 2015) or DropBlock (Ghiasi et al. 2018)
    after block ``block``, keeping a share ``keep`` of the activations in training."""

    method: str = "dropout2d"
    block: int = 3
    keep: float = 0.9
    name = "regularizer"

    def __post_init__(self) -> None:
        if self.method not in REGULARIZERS:
            raise ValueError(
                f"unknown regularizer {self.method!r}; use one of {', '.join(REGULARIZERS)}"
            )
        if not 0 < self.keep <= 1:
            raise ValueError(f"regularizer keep rate {self.keep} must be in (0, 1], e.g. 0.9")

    def on_model(self, config: ModelConfig) -> ModelConfig:
        return replace(
            config,
            regularizer=self.method,
            regularizer_block=self.block,
            regularizer_keep=self.keep,
        )

    def text(self) -> str:
        return self.method


@TRAINING_DEFENSES.register("thermometer")
@dataclass(frozen=True, repr=False)
class Thermometer(TrainingDefense):
    """Thermometer encoding (Buckman et al. 2018) of each pixel into ``levels`` bits; its
    gradient is zero almost everywhere, so it declares BPDA through a ramp per level."""

    levels: int = 16
    name = "thermometer"

    def __post_init__(self) -> None:
        if self.levels < 2:
            raise ValueError(f"thermometer levels {self.levels} must be at least 2, e.g. 16")

    @property
    def surface(self) -> Surface:
        return THERMOMETER_SURFACE

    def on_model(self, config: ModelConfig) -> ModelConfig:
        return replace(config, thermometer=self.levels)

    def text(self) -> str:
        return f"thermometer {self.levels}"


@TRAINING_DEFENSES.register("label_smoothing")
@dataclass(frozen=True, repr=False)
class LabelSmoothing(TrainingDefense):
    """Cross-entropy against targets ``(1 - amount) · onehot + amount / K`` (Szegedy et al.
    2016), the baseline the Defective-CNN paper compares against."""

    amount: float = 0.1
    name = "label_smoothing"

    def __post_init__(self) -> None:
        if not 0 < self.amount < 1:
            raise ValueError(f"label smoothing {self.amount} must be in (0, 1), e.g. 0.1")

    def on_recipe(self, recipe: TrainConfig) -> TrainConfig:
        return replace(recipe, label_smoothing=self.amount)

    def text(self) -> str:
        return f"label smoothing {self.amount:g}"


@TRAINING_DEFENSES.register("adv_train")
@dataclass(frozen=True, repr=False)
class AdversarialTraining(TrainingDefense):
    """Madry et al. (2018): every batch replaced by its ℓ∞ PGD examples (random start,
    ``steps`` steps of ``step``, radius ``eps``; [0, 1] units) against the current model."""

    eps: float = 8 / 255
    step: float = 2 / 255
    steps: int = 7
    name = "adversarial_training"

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1 or self.step <= 0 or self.steps < 1:
            raise ValueError(
                f"adversarial training needs 0 < eps <= 1, step > 0 and steps >= 1; "
                f"got {self.eps}, {self.step}, {self.steps}"
            )

    def on_recipe(self, recipe: TrainConfig) -> TrainConfig:
        return replace(recipe, adv_eps=self.eps, adv_step=self.step, adv_steps=self.steps)

    def text(self) -> str:
        return f"adversarial training {round(self.eps * 255):g}/255"


def model_with(defenses: Iterable[TrainingDefense], config: ModelConfig) -> ModelConfig:
    """The model config with every defense built in, in order."""
    for defense in defenses:
        config = defense.on_model(config)
    return config


def recipe_with(defenses: Iterable[TrainingDefense], recipe: TrainConfig) -> TrainConfig:
    """The training recipe with every defense in it, in order."""
    for defense in defenses:
        recipe = defense.on_recipe(recipe)
    return recipe


def defenses_of(model: ModelConfig, recipe: TrainConfig) -> tuple[TrainingDefense, ...]:
    """The training-time defenses a trained run's configs record (the inverse of
    :func:`model_with` and :func:`recipe_with` on plain configs); for a run directory:
    ``defenses_of(*configs_of(run))``."""
    found: list[TrainingDefense] = []
    if model.defect is not None:
        found.append(DefectMasks(model.defect))
    if model.regularizer is not None:
        found.append(
            SpatialDropout(model.regularizer, model.regularizer_block, model.regularizer_keep)
        )
    if model.thermometer:
        found.append(Thermometer(model.thermometer))
    if recipe.label_smoothing:
        found.append(LabelSmoothing(recipe.label_smoothing))
    if recipe.adv_eps:
        found.append(AdversarialTraining(recipe.adv_eps, recipe.adv_step, recipe.adv_steps))
    return tuple(found)


def configs_of(run_dir: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """The model config and training recipe a run directory records (imported runs, which
    were not trained here, have the default recipe)."""
    meta = read_meta(run_dir)
    return model_config(run_dir, meta), TrainConfig.from_dict(meta.get("train") or {})

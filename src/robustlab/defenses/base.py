"""The Defense contract: every defense that wraps a trained model, and how it is attacked.

A defense is a frozen dataclass config. It

- ``prepare``\\ s what it needs from the undefended model and the training data (fine-tune a
  classifier, fit regeneration units) into a directory of its own, resumably: the directory
  is complete once ``defense.json`` is in it, written last;
- ``wrap``\\ s the base model into a :class:`Defended` module (pixels in [0, 1] in, logits
  out, eval-mode behaviour fixed), loading what ``prepare`` wrote: safetensors and JSON,
  never pickles;
- declares its attack :class:`Surface`: exact gradients, BPDA (which part is replaced by the
  identity in the backward pass) or randomized (EOT samples).

Attacks know no defenses: :func:`attack_view` turns a :class:`Defended` module into the
``nn.Module`` a white-box attacker differentiates, following its surface.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from robustlab.data import Dataset
from robustlab.defenses.baselines import ThermometerEncoding
from robustlab.io import read_json, write_json
from robustlab.models.config import ModelConfig
from robustlab.registry import Registry

SurfaceKind = Literal["differentiable", "bpda", "randomized"]
DONE_FILE = "defense.json"


@dataclass(frozen=True)
class Surface:
    """How a white-box attacker gets gradients through a defense.

    kind : ``differentiable`` (exact gradients), ``bpda`` (``part`` is approximated by the
        identity in the backward pass, Athalye et al. 2018) or ``randomized`` (gradients are
        averaged over ``eot_samples`` draws of the randomness: EOT).
    part : what BPDA replaces, in words (recorded with every adaptive result).
    """

    kind: SurfaceKind = "differentiable"
    part: str = ""
    eot_samples: int = 1


@dataclass(frozen=True)
class PrepareContext:
    """What ``prepare`` may use: the training and test splits, the base model's config (to
    rebuild it for fine-tuning), the device, a seed, quietness."""

    train: Dataset
    test: Dataset
    base_config: ModelConfig
    device: torch.device
    seed: int = 0
    quiet: bool = True


class BaseDefense(ABC):
    """What every defense declares: a kind, a name, an attack surface and its config.

    Subclasses are frozen dataclasses; their fields are the config (``describe``), hashed
    into the cache ``key``. The kinds: ``training`` (:mod:`robustlab.defenses.training_time`:
    built into the model or its recipe before training), ``input`` and ``regeneration``
    (:class:`Defense`: wrap a trained model).
    """

    main: ClassVar[str] = ""  # an input transformation: the field its purify selector sets
    kind: ClassVar[str]  # "training" | "input" | "regeneration"
    name: ClassVar[str]

    @property
    def surface(self) -> Surface:
        """How a white-box attacker gets gradients through this defense (default: exact)."""
        return Surface()

    def check_data(self, *, channels: int, size: int) -> None:
        """Refuse, before any model trains, images this defense cannot take (default:
        nothing): ``channels`` × ``size`` × ``size`` pixels."""
        del channels, size  # a hook with a default, not abstract

    def key(self) -> str:
        """A short hash of the config: with the base model's identity, the cache key."""
        text = json.dumps(self.describe(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> dict[str, object]:
        fields = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {"defense": self.name, **fields}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "defense")
        return f"{type(self).__name__}({params})"


class Defense(BaseDefense):
    """Base of the defenses that wrap a trained model (input transformations, feature
    regeneration): ``prepare`` into a directory, then ``wrap``."""

    @property
    @abstractmethod
    def surface(self) -> Surface: ...

    def prepare(self, base: nn.Module, directory: Path, context: PrepareContext) -> None:
        """Train or fit what the defense needs into ``directory`` (default: nothing)."""
        write_json(directory / DONE_FILE, self.describe())

    @abstractmethod
    def wrap(self, base: nn.Module, directory: Path) -> Defended:
        """The defended model, from the base model and what :meth:`prepare` wrote."""

    def is_prepared(self, directory: Path) -> bool:
        path = directory / DONE_FILE
        return path.is_file() and read_json(path).get("defense") == self.name


# purify = { <selector> = value, ... }: each input transformation registers under its
# selector (``@PURIFIERS.register("jpeg")``); ``main`` names the field the selector sets
PURIFIERS: Registry[type[Defense]] = Registry("purifier")


class Defended(nn.Module):
    """``classifier(transform(x))`` with the defense's surface; eval mode whatever is asked.

    ``transform`` is an input transformation (or identity); ``classifier`` the (possibly
    fine-tuned or regenerated) model. Parameters are frozen: a defended model is evaluated,
    never trained further here.
    """

    def __init__(
        self, classifier: nn.Module, surface: Surface, transform: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.transform = transform if transform is not None else nn.Identity()
        self.classifier = classifier
        self.surface = surface
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Defended:
        super().train(False)  # eval-mode behaviour is fixed: BN statistics, no dropout
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.transform(x))
        return out


class ZeroGradient(nn.Module):
    """The forward pass of ``inner`` (run without autograd) with an honest zero gradient: the
    graph stays connected, so a plain gradient attack sees zero rather than an error."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = self.inner(x)
        return self._backward_path(out, x)

    def _backward_path(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return out + 0 * x


class StraightThrough(ZeroGradient):
    """BPDA with the identity: the forward pass of ``inner``, the backward pass of ``x``."""

    def _backward_path(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x + (out - x).detach()


class ExpectationOverTransformation(nn.Module):
    """EOT: the mean of ``samples`` forward passes of a randomized model (its gradient is the
    mean of the samples' gradients of the logits)."""

    def __init__(self, model: nn.Module, samples: int) -> None:
        super().__init__()
        if samples < 1:
            raise ValueError(f"EOT needs at least one sample, got {samples}")
        self.model, self.samples = model, samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.stack([self.model(x) for _ in range(self.samples)]).sum(0)
        mean: torch.Tensor = total / self.samples
        return mean


# a thermometer encoding's gradient is zero almost everywhere: attacked through its ramps
THERMOMETER_SURFACE = Surface("bpda", part="thermometer encoding (ramp per level)")


def surface_of(model: nn.Module) -> Surface:
    """The attack surface a model declares: a defended model's own; BPDA for a model with a
    thermometer encoding (a training-time defense whose encoding has no useful gradient);
    exact gradients otherwise."""
    if isinstance(model, Defended):
        return model.surface
    if isinstance(getattr(model, "encode", None), ThermometerEncoding):
        return THERMOMETER_SURFACE
    return Surface()


def attack_view(model: nn.Module) -> nn.Module:
    """What a white-box attacker differentiates: the model itself, its BPDA version (the
    declared transform replaced by the identity in the backward pass; a thermometer
    encoding by its ramps) or its EOT average."""
    surface = surface_of(model)
    if not isinstance(model, Defended):
        return _thermometer_view(model) if surface.kind == "bpda" else model
    if surface.kind == "bpda":
        view: nn.Module = Defended(model.classifier, surface, StraightThrough(model.transform))
        return view
    if surface.kind == "randomized":  # eval: attacks restore the mode they found
        return ExpectationOverTransformation(model, surface.eot_samples).eval()
    return model


def exact_view(model: nn.Module) -> nn.Module | None:
    """The defense's exact differentiable implementation, where it has one (None otherwise):
    a transform run without autograd (:class:`ZeroGradient`, e.g. CSC) differentiated
    through itself (CBPDN unrolled), a thermometer encoding through its soft relaxation.
    The escalation of a verdict attacks it when the declared surface's gradients fail."""
    if isinstance(model, Defended) and type(model.transform) is ZeroGradient:
        return Defended(model.classifier, Surface(), model.transform.inner)
    if isinstance(getattr(model, "encode", None), ThermometerEncoding):
        return _thermometer_view(model, relaxed=True)
    return None


def _thermometer_view(model: nn.Module, *, relaxed: bool = False) -> nn.Module:
    """A shallow copy of ``model`` (weights shared) whose encoding passes BPDA gradients
    (``relaxed``: is soft, forward and backward)."""
    encode = getattr(model, "encode")  # noqa: B009
    view = copy.copy(model)
    view._modules = dict(model._modules)  # the original keeps its own encoding
    device = next((b.device for b in model.buffers()), torch.device("cpu"))
    soft = ThermometerEncoding(encode.levels, bpda=not relaxed, relaxed=relaxed)
    view._modules["encode"] = soft.to(device)
    return view


def added_parameters(defended: nn.Module, base: nn.Module) -> int:
    """Parameters the defense adds to the base model (0 for transforms and fine-tuning)."""
    extra = sum(p.numel() for p in defended.parameters()) - sum(
        p.numel() for p in base.parameters()
    )
    return max(0, int(extra))

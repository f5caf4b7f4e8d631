"""The shared base of every attack: parameter checks, input checks, eval mode, seeding.

An attack is built once with its parameters and then called, as often as needed:
``attack(x, y, seed=...) -> x_adv``. It is stateless between calls, puts the model in eval
mode with its weights frozen for the call and restores both after, never touches the
weights or their gradients, and draws all randomness from a generator seeded with the
call's ``seed`` (default: the one it was built with); the same seed gives the same output.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.models.base import declared_input, frozen, warm_started
from robustlab.models.cost import add_queries, paused
from robustlab.registry import Registry


class _Unbound(nn.Module):
    """The network an attack's parameters are checked against (``Attack.check``): there is
    none yet, and a constructor that runs it to check a parameter is a bug."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("an attack's constructor ran the model; check parameters without it")


UNBOUND = _Unbound()


@dataclass
class AttackResult:
    """What an attack returns: adversarial images and, for query-based attacks, model queries."""

    adv: torch.Tensor
    queries: torch.Tensor | None = None  # model evaluations spent on each example
    # iterative attacks that keep their path: success found anywhere along it (on the model
    # they attacked), and the best loss after each step of the first run, (n, steps), NaN
    # for examples that run did not attack (the failure checks read both)
    success: torch.Tensor | None = None
    trace: torch.Tensor | None = None


class Attack(ABC):
    """Base class: subclasses set ``name``, implement :meth:`_run` and register themselves
    with ``@ATTACKS.register()``."""

    name: ClassVar[str]
    gradient: ClassVar[bool] = True  # False: decision- or score-based, or no attack at all
    traced: ClassVar[bool] = False  # True: results carry ``success`` and ``trace`` (steps wide)

    def __init__(self, model: nn.Module, *, seed: int = 0) -> None:
        self.model = model
        self.seed = int(seed)

    def __call__(
        self,
        x: Images,
        y: Labels,
        target: Labels | None = None,
        *,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Adversarial versions of pixels ``x`` (labels ``y``); toward ``target`` if given."""
        return self.run(x, y, target, seed=seed).adv

    def run(
        self,
        x: Images,
        y: Labels,
        target: Labels | None = None,
        *,
        seed: int | None = None,
    ) -> AttackResult:
        """Like calling the attack, with per-example extras (query counts) in the result.

        ``x``: a tensor or numpy array of [0, 1] pixels (N, C, H, W), in the model's float
        dtype or converted to it; ``y``, ``target``: integer labels (tensor, array or list)."""
        seed = self.seed if seed is None else int(seed)
        x, y = as_images(x, self.model), as_labels(y, "labels")
        target = as_labels(target, "target labels") if target is not None else None
        if len(x) == 0:  # nothing to attack: the empty batch itself
            self._check_inputs(x, y, target)
            return AttackResult(x.detach().clone())
        with frozen(self.model), warm_started(self.model):
            self._check_inputs(x, y, target)
            generator = torch.Generator(device=x.device).manual_seed(seed)
            result = self._run(x.detach(), y, target, generator)
        result.adv = result.adv.detach()
        if result.queries is not None:  # score-based: the meters count its queries too
            add_queries(int(result.queries.clamp_min(0).sum()))
        return result

    @abstractmethod
    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> AttackResult: ...

    @classmethod
    def check(cls, **params: Any) -> None:
        """Check ``params`` as the constructor does (one-line ValueErrors, unknown names
        too), before any model exists: a constructor checks its parameters without
        touching the network, which :data:`UNBOUND` enforces (any call of it is an error)."""
        try:
            cls(UNBOUND, **params)
        except TypeError as err:
            raise ValueError(cls.parameter_error(params, err)) from None

    @classmethod
    def parameter_error(cls, params: Mapping[str, object], err: TypeError) -> str:
        """A one-line message for parameters the constructor does not take, naming the
        ones it does (not Python's "unexpected keyword argument")."""
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in SKIPPED]
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            return (
                f"attack {cls.name!r} takes no {unknown[0]!r}; its parameters: "
                f"{', '.join(accepted)}"
            )
        return f"attack {cls.name!r}: {err}"

    def params(self) -> dict[str, object]:
        """The attack's parameters, for adversarial-set files and result records."""
        skip = {"model"}
        return {"attack": self.name, **{k: v for k, v in vars(self).items() if k not in skip}}

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "attack")
        return f"{type(self).__name__}({shown})"

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> None:
        check_images(x, self.model)
        for name, labels in (("labels", y), ("target labels", target)):
            if labels is None:
                continue
            if labels.shape != (len(x),) or labels.dtype.is_floating_point:
                raise ValueError(f"{name} must be integers of shape ({len(x)},)")
            if not len(x):
                continue
            with torch.no_grad(), paused():  # validating the input is no pass of the attack
                classes = int(self.model(x[:1]).shape[1])
            if len(labels) and (labels.min() < 0 or labels.max() >= classes):
                raise ValueError(f"{name} must be in 0..{classes - 1} for this model")


Images = torch.Tensor | np.ndarray
Labels = torch.Tensor | np.ndarray | Sequence[int]


def as_images(x: Images, model: nn.Module) -> torch.Tensor:
    """Pixels as a tensor in the model's floating dtype (numpy arrays and float64 images
    accepted); integer images are refused (:func:`check_images` names the fix)."""
    images = torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a tensor or numpy array, got {type(x).__name__}")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if images.is_floating_point() and dtype is not None and images.dtype != dtype:
        images = images.to(dtype)
    return images


def as_labels(y: Labels, what: str) -> torch.Tensor:
    """Integer labels as a long tensor (a list or numpy array accepted)."""
    if isinstance(y, torch.Tensor):
        return y
    labels = np.asarray(y)
    if labels.dtype.kind not in "iu" and not (labels.size == 0 and labels.dtype.kind == "f"):
        raise ValueError(f"{what} must be integers, got {labels.dtype} values")
    return torch.from_numpy(labels.astype(np.int64))


def check_images(x: torch.Tensor, model: nn.Module) -> None:
    """One-line errors for images an attack or an evaluation cannot take: not a batch,
    integers, non-finite, outside [0, 1], or another shape than the network declares."""
    if x.ndim != 4:
        raise ValueError(f"images must be a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError("images must be float pixels in [0, 1]; divide uint8 images by 255")
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or infinite values; clean the input first")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("images must be pixels in [0, 1]; divide uint8 images by 255")
    shape = declared_input(model)
    if shape is not None and tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"images of shape {tuple(x.shape[1:])}, but the model takes {shape}; resize them"
        )


ATTACKS: Registry[type[Attack]] = Registry("attack")
SKIPPED = ("self", "model")  # constructor arguments that are not parameters

ParamValue = bool | int | float | str
Params = dict[str, ParamValue]  # an attack's parameters, in the library's [0, 1] pixel units


class AttackConfig(NamedTuple):
    """A registered attack and its parameters ([0, 1] units): what a spec's attack table, a
    protocol's attack or a command line names. A tuple, so ``kind, params = config`` reads
    it and its JSON form (a cache key's part) is ``[kind, params]``."""

    kind: str
    params: Params

    def check(self) -> None:
        """The parameters' one-line errors, before any model exists."""
        ATTACKS.get(self.kind).check(**self.params)

    def build(self, model: nn.Module, **extra: ParamValue) -> Attack:
        """The attack against ``model`` (``extra``: parameters a caller adds, e.g. a seed)."""
        cls = ATTACKS.get(self.kind)
        params = {**self.params, **extra}
        make: Callable[..., Attack] = cls  # each subclass takes its own parameters
        try:
            return make(model, **params)
        except TypeError as err:
            raise ValueError(cls.parameter_error(params, err)) from None


def check_range(name: str, value: float, low: float, high: float, hint: str = "") -> float:
    """Return ``value`` if ``low <= value <= high``, else raise a one-line error."""
    if not low <= value <= high:
        raise ValueError(f"{name}={value} must be in [{low}, {high}]{hint}")
    return float(value)


def check_eps(name: str, value: float) -> float:
    """ε and step sizes are in [0, 1] pixel units in the API (the CLI converts from 0-255)."""
    return check_range(name, value, 0.0, 1.0, f"; pixels are in [0, 1], e.g. {name}=16/255")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a one-line error listing them."""
    if value not in choices:
        listed = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{name} {value!r} must be {listed}")
    return value


def check_radius(eps: float, norm: str, *, positive: bool = True) -> float:
    """A ball's radius: ℓ∞ radii are pixel units in [0, 1]; ℓ2 radii may exceed 1 (they sum
    over pixels). ``positive``: zero is refused too."""
    check_choice("norm", norm, ("linf", "l2"))
    radius = check_eps("eps", eps) if norm == "linf" else float(eps)
    if radius < 0 or (positive and radius == 0):
        raise ValueError(f"eps={eps} must be > 0" if positive else f"eps={eps} must be >= 0")
    return radius


def check_steps(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name}={value} must be a positive integer")
    return int(value)


def input_gradient(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targeted: bool
) -> torch.Tensor:
    """∇ₓ of the cross-entropy to ``labels``, summed over the batch (ascent direction).

    For a targeted attack the sign is flipped, so stepping along the result always
    moves toward the goal. Only the input requires a gradient: the weights' ``.grad``
    are left untouched.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), labels, reduction="sum")
        (grad,) = torch.autograd.grad(-loss if targeted else loss, x)
    return grad


def project_linf(adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip ``adv`` into the ℓ∞ ball of radius ε around ``x`` and into [0, 1]."""
    return (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)


def per_example_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    """The ℓp norm of each example of a batch, shaped to broadcast against it."""
    norms: torch.Tensor = t.flatten(1).norm(p=p, dim=1)
    return norms.view(-1, *([1] * (t.ndim - 1)))


def rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example mask shaped to broadcast against a batch like ``like``."""
    return mask.view(-1, *([1] * (like.ndim - 1)))


def project_l2(adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale ``adv - x`` into the ℓ2 ball of radius ε around ``x``, then clip to [0, 1]."""
    delta = adv - x
    factor = (eps / per_example_norm(delta, 2).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta * factor).clamp(0, 1)


class Ensemble(nn.Module):
    """Average of the logits of several models (the ensemble source of transfer attacks)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)

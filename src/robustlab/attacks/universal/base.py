"""Universal perturbations: one image-agnostic perturbation for every input.

A universal attack is built with its parameters and called on a set of images
(or on none, for data-free attacks): ``attack(images) -> UniversalPerturbation``.
Like the per-example attacks it freezes the model for the call and draws all
randomness from a generator seeded with ``seed``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from robustlab.attacks.base import UNBOUND
from robustlab.io import (
    RobustlabError,
    check_array,
    is_hdf5,
    load_tensors,
    save_tensors,
)
from robustlab.models.base import frozen, predict, warm_started
from robustlab.registry import Registry

Norm = Literal["linf", "l2"]
PERTURBATION_FORMAT = "robustlab-universal/1"


def project(delta: torch.Tensor, xi: float, norm: Norm) -> torch.Tensor:
    """Project onto the ℓ∞ or ℓ2 ball of radius ``xi`` (the whole tensor is one vector)."""
    if norm == "linf":
        return delta.clamp(-xi, xi)
    length = delta.norm()
    return delta * (xi / length) if length > xi else delta


def scale_to_ball(raw: torch.Tensor, xi: float, norm: Norm) -> torch.Tensor:
    """A generator's raw output onto the ξ ball: ξ·tanh (ℓ∞), or rescaled to ℓ2 norm ξ; a
    batch (4 axes) is scaled per perturbation, a single (C, H, W) one as a whole."""
    if norm == "linf":
        return xi * torch.tanh(raw)
    dims = tuple(range(1, raw.ndim)) if raw.ndim == 4 else tuple(range(raw.ndim))
    lengths = raw.square().sum(dim=dims, keepdim=True).sqrt()
    scaled: torch.Tensor = raw * (xi / (lengths + 1e-12))
    return scaled


@contextmanager
def conv_activations(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The outputs of every Conv2d of ``model``, collected during the block's forward passes
    (the list is the caller's to clear between passes); hooks removed after."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("this attack needs a model with Conv2d layers")
    found: list[torch.Tensor] = []
    hooks = [c.register_forward_hook(lambda _m, _i, out: found.append(out)) for c in convs]
    try:
        yield found
    finally:
        for hook in hooks:
            hook.remove()


def apply(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Images plus the perturbation, kept in the pixel range [0, 1]."""
    return (images + delta.to(images)).clamp(0.0, 1.0)


def shuffled_batches(
    count: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Indices 0..count-1 in a seeded random order, cut into batches: one pass over the images."""
    order = torch.randperm(count, generator=generator, device=device)
    return torch.split(order, batch_size)


def fooling_rate(model: nn.Module, images: torch.Tensor, delta: torch.Tensor) -> float:
    """Fraction of images whose predicted class changes when ``delta`` is added."""
    if len(images) == 0:
        return 0.0
    changed = predict(model, images) != predict(model, apply(images, delta))
    return float(changed.float().mean())


@dataclass
class UniversalPerturbation:
    """A perturbation (C, H, W) in pixel units, with the attack config that made it."""

    delta: torch.Tensor
    config: dict[str, object] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        meta = {"format": PERTURBATION_FORMAT, **self.config}
        save_tensors(path, {"delta": self.delta.float()}, meta)

    def check_fits(self, shape: tuple[int, ...] | torch.Size, source: str = "") -> None:
        """Refuse a perturbation whose (C, H, W) is not the images' (one line, with the fix)."""
        if tuple(self.delta.shape) != tuple(shape):
            where = f"{source}: " if source else ""
            raise RobustlabError(
                f"{where}the perturbation is {tuple(self.delta.shape)}, the images are "
                f"{tuple(shape)}; re-import it with --crop/--layout to match"
            )

    @classmethod
    def load(cls, path: str | Path) -> UniversalPerturbation:
        if is_hdf5(path):  # a released file given as it is: say how to import it
            raise RobustlabError(
                f"{path}: a released HDF5 perturbation, not robustlab's format; import it "
                f"first: robustlab universal import {path} {HDF5_HINT} --channel-order ... "
                "--out P.safetensors (docs/sfr.md lists the files)"
            )
        tensors, meta = load_tensors(path)
        if meta.get("format") != PERTURBATION_FORMAT or "delta" not in tensors:
            raise RobustlabError(f"{path}: not a robustlab universal perturbation file")
        # δ in [0, 1] pixel units: finite, (C, H, W), no entry beyond the pixel range
        check_array(
            tensors["delta"],
            f"{path} delta",
            kinds="f",
            ndim=3,
            low=-1,
            high=1,
            fix="re-import or re-compute the perturbation",
        )
        meta.pop("format")
        return cls(tensors["delta"], meta)


# how each of the released .h5 files is read (robustlab.attacks.universal.importing)
HDF5_HINT = (
    "--layout matlab (stored transposed: UAP) or --layout h5 (stored as is: sPGD, "
    "Singular Fool, GAP)"
)


class UniversalAttack(ABC):
    """Base: subclasses set ``name``, implement :meth:`_generate` and register themselves with
    ``@UNIVERSAL_ATTACKS.register()``."""

    name: ClassVar[str]
    needs_images: ClassVar[bool] = True

    def __init__(
        self, model: nn.Module, xi: float = 10 / 255, norm: Norm = "linf", *, seed: int = 0
    ):
        if xi <= 0:
            raise ValueError(f"xi must be positive, got {xi}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm {norm!r} must be 'linf' or 'l2'")
        self.model, self.xi, self.norm, self.seed = model, float(xi), norm, int(seed)

    def __call__(self, images: torch.Tensor) -> UniversalPerturbation:
        if self.needs_images and (images.ndim != 4 or len(images) == 0):
            raise ValueError(f"{self.name} needs a batch of images (N, C, H, W)")
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        with frozen(self.model), warm_started(self.model):
            delta = self._generate(images.detach(), generator)
        return UniversalPerturbation(delta.detach().cpu(), self.params())

    @abstractmethod
    def _generate(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def params(self) -> dict[str, object]:
        return {"attack": self.name, **{k: v for k, v in vars(self).items() if k != "model"}}

    @classmethod
    def check(cls, **params: Any) -> None:
        """Check ``params`` as the constructor does, before any model exists (see
        :meth:`robustlab.attacks.base.Attack.check`)."""
        try:
            cls(UNBOUND, **params)
        except TypeError as err:
            raise ValueError(f"universal attack {cls.name!r}: {err}") from None


UNIVERSAL_ATTACKS: Registry[type[UniversalAttack]] = Registry("universal attack")

"""``build(name, model, **params)`` and ``available(pattern)`` for every attack (each
registers itself in :data:`robustlab.attacks.base.ATTACKS`; importing them here fills it)."""

from __future__ import annotations

from typing import Any

from torch import nn

from robustlab.attacks import apgd, apgdt, boundary, cw, fab, fgsm, mifgsm, noise, pgd, square
from robustlab.attacks.base import ATTACKS, Attack

MODULES = (apgd, apgdt, boundary, cw, fab, fgsm, mifgsm, noise, pgd, square)  # each registers one


def available(pattern: str = "*") -> list[str]:
    """Names accepted by :func:`build` that match the shell ``pattern``."""
    return ATTACKS.names(pattern)


def check(name: str, **params: Any) -> None:
    """Check attack ``name``'s parameters before any model exists (one-line errors)."""
    ATTACKS.get(name).check(**params)


def build(name: str, model: nn.Module, **params: Any) -> Attack:
    """Build attack ``name`` against ``model``; unknown parameters are a clear error."""
    cls = ATTACKS.get(name)
    try:
        return cls(model, **params)
    except TypeError as err:
        raise ValueError(cls.parameter_error(params, err)) from None

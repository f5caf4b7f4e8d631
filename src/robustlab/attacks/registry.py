"""``build(name, model, **params)`` and ``available(pattern)`` for every attack (each
registers itself in :data:`robustlab.attacks.base.ATTACKS`; importing them here fills it)."""

from __future__ import annotations

from torch import nn

from robustlab.attacks import apgd, apgdt, boundary, cw, fab, fgsm, mifgsm, noise, pgd, square
from robustlab.attacks.base import ATTACKS, Attack, AttackConfig, ParamValue

MODULES = (apgd, apgdt, boundary, cw, fab, fgsm, mifgsm, noise, pgd, square)  # each registers one


def available(pattern: str = "*") -> list[str]:
    """Names accepted by :func:`build` that match the shell ``pattern``."""
    return ATTACKS.names(pattern)


def check(name: str, **params: ParamValue) -> None:
    """Check attack ``name``'s parameters before any model exists (one-line errors)."""
    AttackConfig(name, params).check()


def build(name: str, model: nn.Module, **params: ParamValue) -> Attack:
    """Build attack ``name`` against ``model``; unknown parameters are a clear error."""
    return AttackConfig(name, params).build(model)

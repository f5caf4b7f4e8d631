"""``build(name, model, **params)`` and ``available()`` for every attack."""

from __future__ import annotations

from typing import Any

from torch import nn

from robustlab.attacks.apgd import APGD
from robustlab.attacks.apgdt import APGDT
from robustlab.attacks.base import Attack
from robustlab.attacks.boundary import Boundary
from robustlab.attacks.cw import CW
from robustlab.attacks.fgsm import FGSM
from robustlab.attacks.mifgsm import MIFGSM
from robustlab.attacks.noise import GaussianNoise
from robustlab.attacks.pgd import PGD
from robustlab.attacks.square import Square

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (FGSM, PGD, MIFGSM, CW, Boundary, GaussianNoise, APGD, APGDT, Square)
}


def available() -> list[str]:
    """Names accepted by :func:`build`."""
    return sorted(ATTACKS)


def build(name: str, model: nn.Module, **params: Any) -> Attack:
    """Build attack ``name`` against ``model``; unknown parameters are a clear error."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(available())}")
    try:
        return ATTACKS[name](model, **params)
    except TypeError as err:
        raise ValueError(f"attack {name!r}: {err}") from None

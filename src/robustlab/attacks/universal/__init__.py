"""Universal (image-agnostic) attacks: ``attack(images) -> UniversalPerturbation``."""

from typing import Any

from torch import nn

from robustlab.attacks.universal.base import (
    UniversalAttack,
    UniversalPerturbation,
    apply,
    fooling_rate,
    project,
)
from robustlab.attacks.universal.deepfool import deepfool
from robustlab.attacks.universal.fff import FFF
from robustlab.attacks.universal.gap import GAP
from robustlab.attacks.universal.guap import GUAP
from robustlab.attacks.universal.nag import NAG
from robustlab.attacks.universal.singular import SingularFool
from robustlab.attacks.universal.spgd import SPGD
from robustlab.attacks.universal.uap import UAP

UNIVERSAL_ATTACKS: dict[str, type[UniversalAttack]] = {
    "uap": UAP,
    "spgd": SPGD,
    "fff": FFF,
    "gap": GAP,
    "nag": NAG,
    "singular": SingularFool,
    "guap": GUAP,
}


def build_universal(name: str, model: nn.Module, **params: Any) -> UniversalAttack:
    """Build universal attack ``name`` (uap, spgd, fff, gap, nag, singular, guap) against
    ``model``."""
    if name not in UNIVERSAL_ATTACKS:
        raise ValueError(
            f"unknown universal attack {name!r}; choose one of {', '.join(UNIVERSAL_ATTACKS)}"
        )
    try:
        return UNIVERSAL_ATTACKS[name](model, **params)
    except TypeError as err:
        raise ValueError(f"universal attack {name!r}: {err}") from None


__all__ = [
    "FFF", "GAP", "GUAP", "NAG", "SPGD", "UAP", "UNIVERSAL_ATTACKS", "SingularFool",
    "UniversalAttack", "UniversalPerturbation", "apply", "build_universal", "deepfool",
    "fooling_rate", "project",
]  # fmt: skip

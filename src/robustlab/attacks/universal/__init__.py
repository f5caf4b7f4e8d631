"""Universal (image-agnostic) attacks: ``attack(images) -> UniversalPerturbation``."""

from typing import Any

from torch import nn

from robustlab.attacks.universal.base import (
    UNIVERSAL_ATTACKS,
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


def build_universal(name: str, model: nn.Module, **params: Any) -> UniversalAttack:
    """Build universal attack ``name`` (:data:`UNIVERSAL_ATTACKS`) against ``model``."""
    cls = UNIVERSAL_ATTACKS.get(name)
    try:
        return cls(model, **params)
    except TypeError as err:
        raise ValueError(f"universal attack {name!r}: {err}") from None


__all__ = [
    "FFF",
    "GAP",
    "GUAP",
    "NAG",
    "SPGD",
    "UAP",
    "UNIVERSAL_ATTACKS",
    "SingularFool",
    "UniversalAttack",
    "UniversalPerturbation",
    "apply",
    "build_universal",
    "deepfool",
    "fooling_rate",
    "project",
]

"""Attacks: ``build(name, model, **params)``; each is called as ``attack(x, y) -> x_adv``."""

from robustlab.attacks.adversarial_set import AdversarialSet, load_set, save_set
from robustlab.attacks.apgd import APGD
from robustlab.attacks.apgdt import APGDT
from robustlab.attacks.base import Attack, AttackResult, Ensemble
from robustlab.attacks.boundary import Boundary
from robustlab.attacks.cw import CW
from robustlab.attacks.fab import FAB
from robustlab.attacks.fgsm import FGSM
from robustlab.attacks.mifgsm import MIFGSM
from robustlab.attacks.noise import GaussianNoise
from robustlab.attacks.pgd import PGD
from robustlab.attacks.registry import available, build
from robustlab.attacks.square import Square

__all__ = [
    "APGD",
    "APGDT",
    "CW",
    "FAB",
    "FGSM",
    "MIFGSM",
    "PGD",
    "AdversarialSet",
    "Attack",
    "AttackResult",
    "Boundary",
    "Ensemble",
    "GaussianNoise",
    "Square",
    "available",
    "build",
    "load_set",
    "save_set",
]

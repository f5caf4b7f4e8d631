"""The strong protocol: AutoAttack's worst case per image (Croce & Hein 2020).

APGD-CE, then APGD-T (targeted DLR over the runner-up classes), then Square; each attack
runs only on the images every earlier one left correctly classified, so an image counts
as robust only if no attack broke it, and no forward pass is spent on an image already
broken. Gradient attacks differentiate the defense's attack view (exact, BPDA or EOT,
:func:`~robustlab.defenses.base.attack_view`); Square queries the defended model itself.
Every adversarial is scored on the real defended model.

After each attack the per-image robust flags are written to ``store/<attack>.safetensors``:
a run stopped mid-protocol continues with the next attack.

Sanity flags (AutoAttack's checks, Croce & Hein 2020, section 5; Carlini et al. 2019):

- ``zero_gradients``: some correctly classified image has an all-zero input gradient;
- ``random_predictions``: two forward passes disagree (randomized model: use EOT);
- ``square_beats_gradients``: the score-based attack broke images both gradient attacks
  left: the gradients are likely masked, and the gradient numbers are upper bounds;
- ``accuracy_rises_with_eps`` (set by the caller over several ε): a larger budget leaves
  more images robust, which a working attack never does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from typing_extensions import TypedDict

from robustlab.attacks.adversarial_set import attack_in_batches
from robustlab.attacks.base import AttackConfig, Params, check_radius, check_steps
from robustlab.defenses.base import attack_view
from robustlab.evaluation.adaptive import BATCH, gradient_checks
from robustlab.evaluation.stats import Rate, RateRecord
from robustlab.io import load_tensors, save_tensors
from robustlab.models.base import predict
from robustlab.models.cost import CostRecord, Meter, counted

# the spec protocol's default (AutoAttack's standard version before FAB-T existed here: the
# default stays, so that the shipped specs' cache keys do; ``attacks`` may name FAB-T)
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "square")
# the protocol's attacks: registry name, the parameters the protocol fixes, and which of
# the budgets (steps, restarts, target_classes, queries) each takes
STRONG_ATTACKS: dict[str, tuple[str, Params, tuple[str, ...]]] = {
    "apgd-ce": ("apgd", {"loss": "ce"}, ("steps", "restarts")),
    "apgd-dlr": ("apgd", {"loss": "dlr"}, ("steps", "restarts")),
    "apgd-t": ("apgdt", {}, ("steps", "restarts", "target_classes")),
    "fab": ("fab", {}, ("steps", "restarts")),
    "fab-t": ("fab", {"targeted": True}, ("steps", "restarts", "target_classes")),
    "square": ("square", {}, ("queries",)),
}
# AutoAttack's versions (Croce & Hein 2020; its ``autoattack.py``): ``rand`` attacks with EOT
VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


def attack_params(name: str, *, eps: float, norm: str, budgets: Mapping[str, int]) -> AttackConfig:
    """Registry name and parameters of the protocol attack ``name`` with these budgets."""
    kind, fixed, takes = STRONG_ATTACKS[name]
    return AttackConfig(kind, {"eps": eps, "norm": norm, **{b: budgets[b] for b in takes}, **fixed})


class StrongParams(TypedDict):
    """A :class:`StrongConfig` as records and cache keys store it."""

    eps: float
    norm: str
    steps: int
    target_classes: int
    queries: int
    restarts: int
    attacks: Sequence[str]


class StrongFields(TypedDict, closed=True):
    """A :class:`StrongResult` as records store it."""

    accuracy: RateRecord
    clean_accuracy: RateRecord
    after: dict[str, RateRecord]
    broken: dict[str, int]
    zero_gradient_share: float
    randomized: bool
    flags: list[str]
    cost_by_attack: dict[str, CostRecord]


@dataclass(frozen=True)
class StrongConfig:
    """Budgets of the strong protocol; ``eps`` in [0, 1] pixel units (ℓ2: may exceed 1).

    AutoAttack's "standard" version: 100 APGD steps, 9 target classes, 5,000 queries.
    """

    eps: float
    norm: str = "linf"
    steps: int = 100
    target_classes: int = 9
    queries: int = 5000
    restarts: int = 1
    attacks: tuple[str, ...] = STANDARD_ATTACKS

    def __post_init__(self) -> None:
        """The budgets check themselves (no attack has to be built to find a bad one)."""
        unknown = [a for a in self.attacks if a not in STRONG_ATTACKS]
        if unknown or not self.attacks:
            raise ValueError(
                f"strong attacks {unknown or '[]'}: use some of {', '.join(STRONG_ATTACKS)}"
            )
        check_radius(self.eps, self.norm)
        for budget in ("steps", "queries", "restarts", "target_classes"):
            check_steps(budget, getattr(self, budget))
        for name in self.attacks:  # and each attack checks its own parameters
            self.attack(name).check()

    def to_dict(self) -> StrongParams:
        """The budgets as JSON-able values (record parameters and cache keys)."""
        return {
            "eps": self.eps,
            "norm": self.norm,
            "steps": self.steps,
            "target_classes": self.target_classes,
            "queries": self.queries,
            "restarts": self.restarts,
            "attacks": self.attacks,
        }

    def attack(self, name: str) -> AttackConfig:
        """Registry name and parameters of one of the protocol's attacks."""
        budgets = {b: getattr(self, b) for b in ("steps", "restarts", "target_classes", "queries")}
        return attack_params(name, eps=self.eps, norm=self.norm, budgets=budgets)


@dataclass(frozen=True)
class StrongResult:
    """Robust accuracy after each attack (cumulative worst case) and overall."""

    clean_accuracy: Rate
    after: dict[str, Rate]  # robust accuracy once this and every earlier attack ran
    broken: dict[str, int]  # images this attack broke that every earlier one had left
    zero_gradient_share: float
    randomized: bool
    flags: list[str] = field(default_factory=list)
    cost: dict[str, CostRecord] = field(default_factory=dict)  # per attack (models.cost)

    @property
    def accuracy(self) -> Rate:
        return list(self.after.values())[-1] if self.after else self.clean_accuracy

    def to_dict(self) -> StrongFields:
        return {
            "accuracy": self.accuracy.to_dict(),
            "clean_accuracy": self.clean_accuracy.to_dict(),
            "after": {name: rate.to_dict() for name, rate in self.after.items()},
            "broken": dict(self.broken),
            "zero_gradient_share": self.zero_gradient_share,
            "randomized": self.randomized,
            "flags": list(self.flags),
            "cost_by_attack": dict(self.cost),
        }


def strong_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: StrongConfig,
    *,
    seed: int = 0,
    store: Path | None = None,
) -> StrongResult:
    """Run ``config.attacks`` in order on ``model`` (module docstring); resumable via ``store``."""
    labels, model = y.cpu(), counted(model)  # a user's network counts its passes too
    clean_pred = predict(model, x)
    robust = clean_pred == labels
    clean = Rate(int(robust.sum()), len(labels))
    after: dict[str, Rate] = {}
    broken: dict[str, int] = {}
    costs: dict[str, CostRecord] = {}
    for name in config.attacks:
        path = store / f"{name}.safetensors" if store is not None else None
        loaded = _load_flags(path, config, name, len(labels))
        if loaded is None:
            still = robust.clone()
            todo = robust.nonzero().squeeze(1)
            with Meter() as cost:
                if len(todo):
                    still[todo] = _survivors(model, x[todo], y[todo], config, name, seed)
            costs[name] = cost.to_dict()
            if path is not None:
                meta = {"attack": name, "config": config.to_dict(), "n": len(labels)}
                save_tensors(path, {"robust": still.to(torch.uint8)}, {**meta, "cost": costs[name]})
        else:
            still, costs[name] = loaded
        broken[name] = int((robust & ~still).sum())
        robust = robust & still
        after[name] = Rate(int(robust.sum()), len(labels))
    checks = gradient_checks(model, x, y, differentiated=attack_view(model), clean_pred=clean_pred)
    flags = checks.flags
    if "square" in config.attacks and config.attacks.index("square") > 0 and broken["square"]:
        flags.append("square_beats_gradients")
    return StrongResult(
        clean, after, broken, checks.zero_gradient_share, checks.randomized, flags, costs
    )


def _survivors(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: StrongConfig, name: str, seed: int
) -> torch.Tensor:
    """Which of these images ``name`` leaves correctly classified by ``model``."""
    kind, params = config.attack(name)
    attacked = model if kind == "square" else attack_view(model)
    adv = attack_in_batches(kind, attacked, params, x, y, seed=seed, batch_size=BATCH).adv
    survived: torch.Tensor = predict(model, adv) == y.cpu()
    return survived


def _load_flags(
    path: Path | None, config: StrongConfig, name: str, n: int
) -> tuple[torch.Tensor, CostRecord] | None:
    """Robust flags saved by an earlier, interrupted run of the same cell and what they cost
    (None if absent)."""
    if path is None or not path.is_file():
        return None
    tensors, meta = load_tensors(path)
    expected = {"attack": name, "config": config.to_dict(), "n": n}
    cost = meta.pop("cost", None)
    if meta != _jsonable(expected) or not isinstance(cost, dict):
        return None  # made with other settings: recompute (the caller's key should prevent it)
    return tensors["robust"].bool(), cost


def _jsonable(data: object) -> object:
    """``data`` as it reads back from JSON (tuples as lists): what a stored header holds."""
    loaded: object = json.loads(json.dumps(data, sort_keys=True))
    return loaded

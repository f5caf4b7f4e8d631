"""Verdicts: a robust accuracy with the evidence of how far to trust it.

A robust accuracy is an upper bound: the worst case per image over every attack that ran
(:mod:`~robustlab.evaluation.worst_case`). The evaluation checks itself with the failure
tests of the field (:mod:`~robustlab.evaluation.checks`) and, where one fires, escalates
(:mod:`~robustlab.evaluation.escalation`) until the checks pass or the budget is spent.
Its :class:`Verdict` says which:

- ``reliable``: every check passed on the first try;
- ``resolved``: checks fired, the escalation ran their remedies, and the checks pass on
  the escalated attacks (the record says how many more images the escalation broke);
- ``unreliable``: a check still fails: the number is an upper bound of unknown tightness;
  ``deciding`` names the check, ``advice`` what a user could try next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from typing_extensions import TypedDict

from robustlab.attacks.base import Params, check_choice, check_radius, check_steps
from robustlab.evaluation.checks import Check, CheckRecord
from robustlab.evaluation.stats import Rate, RateRecord
from robustlab.evaluation.strong import VERSIONS
from robustlab.evaluation.worst_case import Role
from robustlab.models.cost import CostRecord

Status = Literal["reliable", "resolved", "unreliable"]
BUDGETS = ("standard", "thorough")


@dataclass(frozen=True)
class EvaluationConfig:
    """What to run: the threat model (``eps`` in [0, 1] pixel units, ``norm``), AutoAttack's
    ``version`` (``standard``: APGD-CE, APGD-T, FAB-T, Square; ``plus``; ``rand``: APGD-CE
    and APGD-DLR with EOT), the attacks' budgets (AutoAttack's by default; CPU runs may
    use less, and every verdict carries them) and the escalation ``budget``
    (``standard``: each remedy once; ``thorough``: a second round at twice the budget).

    ``eot_samples``: gradient samples of EOT attacks; ``passes``: forward passes that score
    an adversarial of a randomized model (broken if most passes misclassify it);
    ``probe``: images the probing checks use (unstable predictions, ε = 1, binarization);
    ``full_queries``: Square's queries on the escalation's ``square-full`` rung (AutoAttack's
    5,000; a CPU spec may name fewer, and the verdict carries it).
    """

    eps: float
    norm: str = "linf"
    version: str = "standard"
    budget: str = "standard"
    steps: int = 100
    restarts: int = 1
    target_classes: int = 9
    queries: int = 5000
    eot_samples: int = 20
    passes: int = 10
    probe: int = 64
    full_queries: int = 5000

    def __post_init__(self) -> None:
        check_radius(self.eps, self.norm)
        check_choice("version", self.version, tuple(VERSIONS))
        check_choice("budget", self.budget, BUDGETS)
        counts = ("steps", "restarts", "target_classes", "queries", "eot_samples", "passes")
        for name in (*counts, "probe", "full_queries"):
            check_steps(name, getattr(self, name))

    def budgets(self, scale: int = 1) -> dict[str, int]:
        """The attacks' budgets, ``scale`` times the configured steps, restarts and queries."""
        return {
            "steps": self.steps * scale,
            "restarts": self.restarts * scale,
            "target_classes": self.target_classes,
            "queries": self.queries * scale,
        }

    def to_dict(self) -> Params:
        return asdict(self)  # every field a number or a name


class StepRecord(TypedDict):
    """A :class:`Step` as verdict records store it."""

    name: str
    attack: str
    role: Role
    surface: str
    reason: str
    attacked: int
    broke: int
    new: int
    robust_after: int
    seconds: float
    params: Params  # the attack's parameters: numbers and names
    counted: bool
    cost: CostRecord


class VerdictFields(TypedDict, closed=True):
    """A :class:`Verdict` as records store it."""

    config: Params
    clean: RateRecord
    robust: RateRecord
    upper_bound: bool
    status: Status
    deciding: str
    advice: str
    fired: list[str]
    checks: list[CheckRecord]
    steps: list[StepRecord]
    first_breakers: dict[str, int]
    breaker: list[str]
    escalation_broke: int


class SourceRecord(TypedDict):
    """The evaluated model as a plan records it: a run folder or a factory, its weights and
    their hash, the normalisation its network expects."""

    model: str
    weights: str | None
    sha256: str | None
    mean: list[float]
    std: list[float]


class EvaluationPlan(TypedDict):
    """What ``robustlab evaluate`` runs (its folder's plan.json: a second evaluation with
    another plan is refused there)."""

    robustlab: str  # the version
    source: SourceRecord
    base: str | None
    dataset: str
    n: int
    images_sha256: str
    seed: int
    config: Params


@dataclass(frozen=True)
class Step:
    """One attack of an evaluation: what it attacked, why, and what it broke.

    ``role``: ``white`` (iterative gradient attack), ``black`` (score-based, transferred or
    random), ``single`` (single-step gradient); ``reason``: the check whose remedy it is
    ("" for the version's own attacks and the checks' probes); ``new``: images it broke
    that no earlier step had; ``robust_after``: robust images once it ran.
    """

    name: str
    attack: str
    role: Role
    surface: str
    reason: str
    attacked: int
    broke: int
    new: int
    robust_after: int
    seconds: float
    params: Params
    counted: bool = True  # False: outside the threat model (ε = 1 probe), not a worst case
    cost: CostRecord = field(default_factory=dict)  # passes, queries, seconds, memory

    def to_dict(self) -> StepRecord:
        return {
            "name": self.name,
            "attack": self.attack,
            "role": self.role,
            "surface": self.surface,
            "reason": self.reason,
            "attacked": self.attacked,
            "broke": self.broke,
            "new": self.new,
            "robust_after": self.robust_after,
            "seconds": self.seconds,
            "params": dict(self.params),
            "counted": self.counted,
            "cost": dict(self.cost),
        }


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`~robustlab.evaluation.escalation.evaluate` (module docstring)."""

    config: EvaluationConfig
    clean: Rate
    robust: Rate  # worst case per image over every counted step: an upper bound
    status: Status
    checks: tuple[Check, ...]  # their final state
    fired: tuple[str, ...]  # checks that fired before any escalation
    steps: tuple[Step, ...]
    first_breakers: Mapping[str, int]  # per step, the images it broke first
    breaker: tuple[str, ...]  # per image, the step that broke it first ("" if none)
    escalation_broke: int  # images broken by escalation steps (0 if none ran)
    deciding: str = ""
    advice: str = ""

    @property
    def failing(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        """One line: robust accuracy, status and the deciding check."""
        c = self.config
        head = f"robust accuracy {self.robust} at eps={c.eps:.4g} ({c.norm}), {self.status}"
        if self.status == "unreliable":
            return f"{head}: {self.deciding} fails; {self.advice}"
        if self.status == "resolved":
            return f"{head}: {', '.join(self.fired)} fired and pass after escalation"
        return f"{head}: every check passed"

    def to_dict(self) -> VerdictFields:
        return {
            "config": self.config.to_dict(),
            "clean": self.clean.to_dict(),
            "robust": self.robust.to_dict(),
            "upper_bound": True,
            "status": self.status,
            "deciding": self.deciding,
            "advice": self.advice,
            "fired": list(self.fired),
            "checks": [c.to_dict() for c in self.checks],
            "steps": [s.to_dict() for s in self.steps],
            "first_breakers": dict(self.first_breakers),
            "breaker": list(self.breaker),
            "escalation_broke": self.escalation_broke,
        }


def decide(
    fired: tuple[str, ...], final: tuple[Check, ...], tried: list[str], *, robust: int
) -> dict[str, str]:
    """Status, deciding check and advice from the checks before and after escalation.

    ``robust``: the images no attack broke. With none left the upper bound is the truth
    (robust accuracy cannot be below 0): reliable whatever a check says, and the advice
    names the checks that failed (a check such as silent success can fire on an attack
    that broke everything, which says nothing about the number)."""
    failing = [c for c in final if not c.passed]
    if robust == 0:
        names = ", ".join(c.name for c in failing)
        note = f"every image was broken, so 0 is exact (checks that failed: {names})"
        return {"status": "reliable", "deciding": "", "advice": note if failing else ""}
    if not fired and not failing:
        return {"status": "reliable", "deciding": "", "advice": ""}
    if not failing:
        return {"status": "resolved", "deciding": "", "advice": ""}
    first = failing[0]
    done = f" (escalation tried: {', '.join(tried)})" if tried else ""
    return {"status": "unreliable", "deciding": first.name, "advice": first.remedy + done}

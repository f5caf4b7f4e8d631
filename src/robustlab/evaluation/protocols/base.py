"""The protocol contract: one module per protocol, one typed config, one way to run it.

A protocol module defines a frozen dataclass that subclasses :class:`Protocol` and registers
itself with ``@PROTOCOLS.register()`` (under its ``kind``, the spec's ``type = "..."``). It
holds

- the **config**, parsed once from the spec's ``[[protocols]]`` table by :meth:`Protocol.parse`:
  defaults live in the dataclass fields, 0-255 values become [0, 1] there (through
  :mod:`robustlab.units`), and every error names the table and the key;
- :meth:`Protocol.cells`, which yields the protocol's result cells, each computed once
  through :meth:`Context.record` (the executor's cache, keyed by what the cell depends on);
- its **record schemas** (``schemas``): what each of its records carries on disk, checked
  before a cell is written and when the report reads it.

The executor (:mod:`robustlab.experiments.executor`) implements :class:`Context`: it trains,
prepares, caches and times; a protocol holds the evaluation logic and nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Required, TypedDict
from typing import Protocol as TypingProtocol

import numpy as np
import torch
from torch import nn

from robustlab.attacks import AdversarialSet
from robustlab.attacks.base import AttackConfig, Params
from robustlab.attacks.universal import UniversalPerturbation
from robustlab.evaluation.checks import CheckRecord
from robustlab.evaluation.measures import DecisionFields
from robustlab.evaluation.stats import RateRecord
from robustlab.evaluation.strong import StrongParams
from robustlab.evaluation.universal import RestorationRecord
from robustlab.evaluation.verdict import Status, StepRecord
from robustlab.io import check_title
from robustlab.models.cost import CostRecord
from robustlab.registry import Registry

# the record fields that are rates (RateRecord)
RateField = Literal[
    "accuracy",
    "clean_accuracy",
    "defense_rate",
    "fooling_rate",
    "perturbed_accuracy",
    "base_clean_accuracy",
    "noise_accuracy",
    "robust",
    "clean",
]


class Record(TypedDict, total=False):
    """A result cell as written to disk (JSON) and read back: every field some kind of
    record carries, typed once. Which fields a kind must carry is its :class:`Schema`,
    checked before a cell is written and when the report reads it
    (:func:`robustlab.report.records.check_record`); units are the record's ``units``."""

    protocol: Required[str]  # the record's kind: a protocol's, or "summary"
    version: str
    seed: int
    protocol_index: int  # which of the spec's protocols made it
    units: dict[str, str]
    cost: CostRecord
    # what the cell read that was made once for several cells (an adversarial set, a
    # universal perturbation): its cost, which ``cost`` does not include (older cells: absent)
    shared_cost: dict[str, CostRecord]
    # names of the cell
    source: str
    target: str
    attack: str
    against: str  # universal: whose perturbation (base, defended, imported)
    surface: str
    bpda_part: str
    defense: str
    success_file: str
    # rates
    accuracy: RateRecord
    clean_accuracy: RateRecord
    defense_rate: RateRecord
    fooling_rate: RateRecord
    perturbed_accuracy: RateRecord
    base_clean_accuracy: RateRecord
    noise_accuracy: RateRecord
    transfer_accuracy: RateRecord | None
    robust: RateRecord
    clean: RateRecord
    rates: list[RateRecord]
    after: dict[str, RateRecord]  # strong: robust accuracy after each attack
    curves: dict[str, dict[str, RateRecord]]  # model -> level -> rate
    restoration: RestorationRecord
    # what the attack was given
    params: Params | StrongParams
    eps: float
    xi: float
    eps_max: float
    resolution: float
    steps: int | list[StepRecord]  # a curve's search steps; a verdict's attacks
    n: int
    headline: bool
    # what the attack found
    flags: list[str]
    zero_gradient_share: float
    randomized: bool
    loss_clean: float
    loss_adversarial: float
    loss_rises: bool
    near_chance: bool
    masking: bool
    linf: float
    broken: dict[str, int]
    score: DecisionFields
    cost_by_attack: dict[str, CostRecord]
    cost_by_model: dict[str, CostRecord]
    # the comparison table's own (summary)
    ms_per_image: float
    cost_ratio: float | None
    passes_per_image: float
    passes_ratio: float | None
    added_parameters: int
    # a verdict
    config: Params
    status: Status
    deciding: str
    advice: str
    upper_bound: bool
    fired: list[str]
    checks: list[CheckRecord]
    first_breakers: dict[str, int]
    breaker: list[str]
    escalation_broke: int


@dataclass(frozen=True)
class Schema:
    """Required fields of one kind of record: ``names`` (strings naming models and
    attacks), ``rates`` (each a Rate: hits, n, rate, low, high) and ``other`` fields."""

    names: tuple[str, ...] = ()
    rates: tuple[str, ...] = ()
    other: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpecView:
    """What parsing a protocol may consult: the spec's models (name -> trained by the spec
    itself, i.e. not an ensemble and not a defended wrapper) and attacks (name -> kind)."""

    models: Mapping[str, bool]
    attacks: Mapping[str, str]
    n: int


class Context(TypingProtocol):
    """What the executor offers a protocol while it runs (one results directory)."""

    x: torch.Tensor  # the spec's seeded test images, pixels in [0, 1]
    y: torch.Tensor
    indices: np.ndarray  # their indices in the test split
    seed: int
    n: int

    def model(self, name: str) -> nn.Module: ...  # trained / prepared on first use

    def base_of(self, name: str) -> str: ...  # the undefended model behind a defended one

    def ids(self, models: list[str]) -> list[str]: ...  # what was made for them (cache keys)

    def declared(self, name: str) -> list[str]: ...  # a trained model's declared surface

    def attack(self, name: str) -> AttackConfig: ...  # a spec attack

    def adversarial_set(self, sources: list[str], attack: str) -> AdversarialSet: ...

    def universal_perturbation(
        self, victim: str, attack: str, xi: float, attack_images: int, options: Params
    ) -> UniversalPerturbation: ...

    def record(self, key: list[Any], compute: Callable[[], Record]) -> Record: ...

    def path(self, folder: str, name: str) -> Path: ...  # a file under the results directory


def with_shared_cost(record: Record, made: str, cost: object) -> Record:
    """``record`` naming the cost of what it read that was ``made`` once for several cells
    (``adversarial_set``, ``perturbation``), as that file recorded it: a file made before
    files recorded their cost (or a cost that is not one) adds nothing."""
    if isinstance(cost, dict) and all(isinstance(v, int | float) for v in cost.values()):
        record["shared_cost"] = {made: cost}
    return record


def key(ctx: Context, *parts: Any) -> list[Any]:
    """A cell's cache key: what it depends on, then the spec's n and seed."""
    return [*parts, ctx.n, ctx.seed]


class Protocol(ABC):
    """Base of the protocol configs (frozen dataclasses; see the module docstring)."""

    kind: ClassVar[str]  # the spec's type = "..."
    keys: ClassVar[frozenset[str]]  # the spec keys besides type and name
    schemas: ClassVar[dict[str, Schema]]  # record kind -> schema
    table_order: ClassVar[int] = 100  # where its table comes in results.md (ascending)
    name: str | None  # the spec's heading for the protocol, if any

    @classmethod
    @abstractmethod
    def parse(cls, entry: Mapping[str, Any], where: str, spec: SpecView) -> Protocol:
        """The config of a spec table (already checked for unknown keys and model names)."""

    @abstractmethod
    def cells(self, ctx: Context) -> Iterator[Record]:
        """The protocol's records, each computed once through ``ctx.record``."""

    @classmethod
    def markdown(cls, records: list[Record]) -> list[str]:
        """Its table in results.md from all the run's records (default: none); the helpers
        are in :mod:`robustlab.evaluation.protocols.tables`."""
        del records  # a hook with a default (no table), not abstract
        return []

    @classmethod
    def comparison(cls, model: str, records: list[Record]) -> Mapping[str, Any]:
        """Its cells of ``model``'s row in the comparison table, from all the run's records:
        ``robustlab.report.tables.ComparisonRow`` fields by name (``flags`` are pooled over
        protocols); default: none."""
        del model, records  # a hook with a default (no column), not abstract
        return {}

    def check_data(self, *, images: int, size: int, classes: int) -> None:
        """Refuse, before any model trains, what the data cannot give (default: nothing):
        ``images`` test images of ``size`` × ``size`` pixels in ``classes`` classes."""
        del images, size, classes  # a hook with a default (nothing to refuse), not abstract

    def evaluated(self) -> tuple[str, ...]:
        """The models this protocol evaluates (the comparison table's rows): its ``models``
        unless it says otherwise (transfer: its targets)."""
        return tuple(getattr(self, "models", ()))

    @property
    def title(self) -> str:
        return self.name or self.kind


PROTOCOLS: Registry[type[Protocol]] = Registry("protocol", attribute="kind")
MODEL_KEYS = ("sources", "targets", "models")


def parse_protocol(index: int, entry: Mapping[str, Any], spec: SpecView) -> Protocol:
    """The typed config of the spec's ``index``-th ``[[protocols]]`` table; errors name it."""
    kind = entry.get("type")
    where = f"[[protocols]] #{index + 1} ({kind})"
    if kind not in PROTOCOLS:
        raise ValueError(f"{where}: unknown type; use one of {', '.join(PROTOCOLS)}")
    cls = PROTOCOLS.get(str(kind))
    unknown = set(entry) - cls.keys - {"type", "name"}
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if "name" in entry:
        check_title(entry["name"], where)
    for field in MODEL_KEYS:
        value = entry.get(field)
        if field in entry and not isinstance(value, list):
            example = f', e.g. {field} = ["{value}"]' if isinstance(value, str) else ""
            raise ValueError(f"{where}: {field} must be a list of model names{example}")
        for model in entry.get(field, []):
            if model not in spec.models:
                raise ValueError(f"{where}: {field} names unknown model {model!r}")
    return cls.parse(entry, where, spec)


# shared checks of the parsers ------------------------------------------------------------------


def names(
    entry: Mapping[str, Any], field: str, where: str, *, required: bool = True
) -> tuple[str, ...]:
    """A list of names from the table (a non-empty one when ``required``)."""
    value = entry.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'{where}: {field} must be a list of names, e.g. {field} = ["a"]')
    if required and not value:
        raise ValueError(f"{where}: needs a non-empty {field!r} list")
    return tuple(value)


def spec_attacks(entry: Mapping[str, Any], where: str, spec: SpecView) -> tuple[str, ...]:
    """The table's ``attacks``: names declared under ``[attacks]``."""
    attacks = names(entry, "attacks", where)
    for attack in attacks:
        if attack not in spec.attacks:
            raise ValueError(f"{where}: unknown attack {attack!r}; declare it under [attacks]")
    return attacks


def count(entry: Mapping[str, Any], field: str, where: str, default: int) -> int:
    """A positive integer of the table (``default``, unchecked, when absent)."""
    if field not in entry:
        return default
    value = entry[field]
    if type(value) is not int or value < 1:
        raise ValueError(f"{where}: {field} = {value!r} must be a positive integer")
    return value


def images(entry: Mapping[str, Any], where: str, spec: SpecView, default: int | None = None) -> int:
    """The table's ``n`` (``default``: the experiment's): at most the experiment's n, which
    is all the images there are (more would silently be fewer)."""
    n = count(entry, "n", where, spec.n if default is None else default)
    if n > spec.n:
        raise ValueError(
            f"{where}: n = {n} exceeds the experiment's n = {spec.n}; use n <= {spec.n} "
            "(or raise [experiment] n)"
        )
    return n


def flag_rising_with_eps(cells: list[Record], group: Callable[[Record], Any]) -> list[Record]:
    """Add ``accuracy_rises_with_eps`` to cells of one model and attack kind where a larger ε
    left more images correctly classified than a smaller one: a working attack never does
    that (Carlini et al. 2019, section 5.2), so one of the two numbers is not to be trusted."""
    flagged = [c.copy() for c in cells]
    for i, a in enumerate(flagged):
        for b in flagged[i + 1 :]:
            if group(a) != group(b):
                continue
            low, high = sorted((a, b), key=_eps_of)
            if _eps_of(high) > _eps_of(low) and high["accuracy"]["hits"] > low["accuracy"]["hits"]:
                for cell in (low, high):
                    if "accuracy_rises_with_eps" not in cell.setdefault("flags", []):
                        cell["flags"] = [*cell["flags"], "accuracy_rises_with_eps"]
    return flagged


def _eps_of(record: Record) -> float:
    if "eps" in record:
        return float(record["eps"])
    params = record.get("params")
    return float(params.get("eps", 0.0)) if params is not None else 0.0

"""Transfer: adversarial sets made on source models, scored on target models (the
Defective-CNN paper's tables 2-9). ``ensemble_transfer``: each model against the
logit-averaging ensemble of the others (table 6).

Record: ``accuracy`` and ``defense_rate`` on the set's images (the defense rate counts only
the images that fooled the source), ``clean_accuracy`` on the same images unperturbed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from robustlab.evaluation.protocols import tables as T
from robustlab.evaluation.protocols.base import (
    PROTOCOLS,
    Context,
    Protocol,
    Record,
    Schema,
    SpecView,
    key,
    names,
    spec_attacks,
    with_shared_cost,
)
from robustlab.evaluation.transfer import transfer

SCHEMA = Schema(
    ("source", "target", "attack"), ("accuracy", "clean_accuracy", "defense_rate"), ("params",)
)


def _check_sources(where: str, field: str, models: tuple[str, ...], spec: SpecView) -> None:
    for model in models:
        if not spec.models[model]:
            raise ValueError(
                f"{where}: {field} may not name defended model {model!r}: "
                "adversarial sets are made on trained models"
            )


def transfer_cells(
    ctx: Context, kind: str, sources: list[str], targets: tuple[str, ...], attacks: tuple[str, ...]
) -> Iterator[Record]:
    """One cell per attack and target: the set of ``attack`` on ``sources`` scored on it."""
    for attack in attacks:
        for target in targets:
            cell_key = key(ctx, kind, ctx.ids(sources), ctx.ids([target]), ctx.attack(attack))

            def compute(attack: str = attack, target: str = target) -> Record:
                adv_set = ctx.adversarial_set(sources, attack)
                result = transfer(ctx.model(target), adv_set, ctx.x, labels=ctx.y).to_dict()
                record: Record = {
                    "protocol": kind,
                    "source": "+".join(sources),
                    "target": target,
                    "attack": attack,
                    "params": ctx.attack(attack)[1],
                    **result,
                }
                return with_shared_cost(record, "adversarial_set", adv_set.config.get("cost"))

            yield ctx.record(cell_key, compute)


@PROTOCOLS.register()
@dataclass(frozen=True)
class Transfer(Protocol):
    """Every source's sets, every attack, scored on every target."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    attacks: tuple[str, ...]
    name: str | None = None

    kind = "transfer"
    keys = frozenset({"sources", "targets", "attacks"})
    schemas: ClassVar[dict[str, Schema]] = {"transfer": SCHEMA}

    table_order = 10

    @classmethod
    def comparison(cls, model: str, records: list[Record]) -> Mapping[str, Any]:
        """The worst success defense rate over sources and attacks."""
        return {"transfer": T.worst(records, model, "transfer", "defense_rate")}

    @classmethod
    def markdown(cls, records: list[Record]) -> list[str]:
        rows = [
            [
                r["source"],
                r["target"],
                r["attack"],
                T.rate_text(r["defense_rate"]),
                T.rate_text(r["accuracy"]),
                T.rate_text(r["clean_accuracy"]),
            ]
            for r in T.of(records, "transfer", "ensemble_transfer")  # one table for both
        ]
        return T.section(
            "Transfer: success defense rate (filtered, appendix A.7) and unfiltered accuracy",
            ["source", "target", "attack", "defense rate", "accuracy", "clean accuracy"],
            rows,
        )

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str, spec: SpecView) -> Transfer:
        attacks = spec_attacks(entry, where, spec)
        sources = names(entry, "sources", where)
        _check_sources(where, "sources", sources, spec)
        return cls(sources, names(entry, "targets", where), attacks, entry.get("name"))

    def cells(self, ctx: Context) -> Iterator[Record]:
        for source in self.sources:
            yield from transfer_cells(ctx, self.kind, [source], self.targets, self.attacks)

    def evaluated(self) -> tuple[str, ...]:
        return self.targets


@PROTOCOLS.register()
@dataclass(frozen=True)
class EnsembleTransfer(Protocol):
    """Each model against the sets of the ensemble of all the others."""

    models: tuple[str, ...]
    attacks: tuple[str, ...]
    name: str | None = None

    kind = "ensemble_transfer"
    keys = frozenset({"models", "attacks"})
    schemas: ClassVar[dict[str, Schema]] = {"ensemble_transfer": SCHEMA}

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str, spec: SpecView) -> EnsembleTransfer:
        attacks = spec_attacks(entry, where, spec)
        models = names(entry, "models", where)
        _check_sources(where, "models", models, spec)
        return cls(models, attacks, entry.get("name"))

    def cells(self, ctx: Context) -> Iterator[Record]:
        for target in self.models:
            others = [m for m in self.models if m != target]
            yield from transfer_cells(ctx, self.kind, others, (target,), self.attacks)

"""White-box: each model attacked through plain gradients of itself (no BPDA, no EOT: the
``adaptive`` protocol attacks through a defense's declared surface). Each cell also runs
the gradient checks (zero gradients, randomized predictions) and flags accuracy that rises
with ε.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from robustlab.evaluation.adaptive import gradient_checks
from robustlab.evaluation.measures import whitebox_accuracy
from robustlab.evaluation.protocols import tables as T
from robustlab.evaluation.protocols.base import (
    PROTOCOLS,
    Context,
    Protocol,
    Record,
    Schema,
    SpecView,
    flag_rising_with_eps,
    key,
    names,
    spec_attacks,
)


@PROTOCOLS.register()
@dataclass(frozen=True)
class Whitebox(Protocol):
    """Every attack on every model, through the model's own gradients."""

    models: tuple[str, ...]
    attacks: tuple[str, ...]
    name: str | None = None

    kind = "whitebox"
    keys = frozenset({"models", "attacks"})
    schemas: ClassVar[dict[str, Schema]] = {
        "whitebox": Schema(
            ("target", "attack"), ("accuracy",), ("params", "flags", "zero_gradient_share")
        )
    }

    table_order = 20

    @classmethod
    def comparison(cls, model: str, records: list[Record]) -> Mapping[str, Any]:
        """The worst accuracy over white-box attacks (plain gradients), and their flags."""
        found = T.worst(records, model, "whitebox", "accuracy")
        return {"whitebox": found, "flags": T.flags_of(records, model, "whitebox")}

    @classmethod
    def markdown(cls, records: list[Record]) -> list[str]:
        rows = [
            [r["target"], r["attack"], T.rate_text(r["accuracy"]), T.flags_text(r)]
            for r in T.of(records, "whitebox")
        ]
        return T.section("White-box accuracy", ["model", "attack", "accuracy", "flags"], rows)

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str, spec: SpecView) -> Whitebox:
        attacks = spec_attacks(entry, where, spec)
        return cls(names(entry, "models", where), attacks, entry.get("name"))

    def cells(self, ctx: Context) -> Iterator[Record]:
        for name in self.models:
            cells = [self._cell(ctx, name, attack) for attack in self.attacks]
            yield from flag_rising_with_eps(cells, group=lambda r: ctx.attack(r["attack"])[0])

    def _cell(self, ctx: Context, name: str, attack: str) -> Record:
        kind, params = ctx.attack(attack)

        def compute() -> Record:
            model = ctx.model(name)
            rate = whitebox_accuracy(model, ctx.x, ctx.y, attack=kind, params=params, seed=ctx.seed)
            checks = gradient_checks(model, ctx.x, ctx.y).to_dict()
            return {
                "protocol": "whitebox",
                "target": name,
                "attack": attack,
                "params": params,
                "accuracy": rate.to_dict(),
                **checks,
            }

        return ctx.record(key(ctx, "whitebox/2", ctx.ids([name]), kind, params), compute)

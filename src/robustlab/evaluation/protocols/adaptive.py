"""Adaptive white-box: each model attacked through its declared attack surface (exact
gradients, BPDA or EOT, :func:`robustlab.defenses.base.attack_view`) and scored on the real
model, with sanity flags (Carlini et al. 2019; Tramèr et al. 2020): zero gradients, a loss
that does not rise, black-box (transfer from the undefended base, sign noise) beating
white-box, randomized predictions, chance-level clean accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from robustlab.attacks.base import ATTACKS
from robustlab.evaluation.adaptive import adaptive_attack
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
)


@PROTOCOLS.register()
@dataclass(frozen=True)
class Adaptive(Protocol):
    """Every gradient attack on every model, through its declared surface."""

    models: tuple[str, ...]
    attacks: tuple[str, ...]
    name: str | None = None

    kind = "adaptive"
    keys = frozenset({"models", "attacks"})
    schemas: ClassVar[dict[str, Schema]] = {
        "adaptive": Schema(
            ("target", "attack", "surface"),
            ("accuracy", "clean_accuracy"),
            ("params", "flags", "loss_rises", "masking"),
        )
    }

    table_order = 40

    @classmethod
    def comparison(cls, model: str, records: list[Record]) -> Mapping[str, Any]:
        """The worst accuracy over adaptive attacks (BPDA/EOT), and their flags."""
        found = T.worst(records, model, "adaptive", "accuracy")
        return {"adaptive": found, "flags": T.flags_of(records, model, "adaptive")}

    @classmethod
    def markdown(cls, records: list[Record]) -> list[str]:
        rows = []
        for r in T.of(records, "adaptive"):
            surface = r["surface"] + (f" ({r['bpda_part']})" if r["bpda_part"] else "")
            moved = T.rate_text(r["transfer_accuracy"]) if r["transfer_accuracy"] else "—"
            rows.append(
                [
                    r["target"],
                    r["attack"],
                    surface,
                    T.rate_text(r["accuracy"]),
                    T.rate_text(r["clean_accuracy"]),
                    moved,
                    T.rate_text(r["noise_accuracy"]),
                    f"{r['zero_gradient_share']:.2f}",
                    f"{r['loss_clean']:.2f} → {r['loss_adversarial']:.2f}",
                    T.flags_text(r),
                ]
            )
        headers = [
            "model",
            "attack",
            "surface",
            "accuracy",
            "clean",
            "transfer from base",
            "±ε noise",
            "zero-grad share",
            "loss clean → adv",
            "flags",
        ]
        title = "Adaptive white-box: the attack through the whole defended model"
        return T.section(title, headers, rows)

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str, spec: SpecView) -> Adaptive:
        attacks = spec_attacks(entry, where, spec)
        for attack in attacks:
            if not ATTACKS.get(spec.attacks[attack]).gradient:
                usable = [n for n in ATTACKS.names() if ATTACKS.get(n).gradient]
                raise ValueError(
                    f"{where}: attack {attack!r} is not a gradient attack; use one of "
                    f"{', '.join(usable)}"
                )
        return cls(names(entry, "models", where), attacks, entry.get("name"))

    def cells(self, ctx: Context) -> Iterator[Record]:
        for attack in self.attacks:
            for name in self.models:
                yield self._cell(ctx, name, attack)

    def _cell(self, ctx: Context, name: str, attack: str) -> Record:
        kind, params = ctx.attack(attack)

        def compute() -> Record:
            model, base = ctx.model(name), ctx.model(ctx.base_of(name))
            result = adaptive_attack(model, ctx.x, ctx.y, kind, params, base=base, seed=ctx.seed)
            return {
                "protocol": "adaptive",
                "target": name,
                "attack": attack,
                "params": params,
                **result.to_dict(),
            }

        ids = ctx.ids([name, ctx.base_of(name)])
        return ctx.record(key(ctx, "adaptive", ids, kind, params, *ctx.declared(name)), compute)

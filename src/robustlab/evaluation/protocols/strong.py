"""Strong: AutoAttack's worst case per image (APGD-CE, APGD-T, Square by default; see
:mod:`robustlab.evaluation.strong`) at one or several ε, the first the headline. Per-image
robust flags are stored after each attack, so a stopped cell resumes with the next attack.
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
    flag_rising_with_eps,
    images,
    key,
    names,
)
from robustlab.evaluation.strong import STANDARD_ATTACKS, StrongConfig, strong_attack
from robustlab.io import config_hash
from robustlab.units import from_255

BUDGETS = ("norm", "steps", "target_classes", "queries", "restarts")


@PROTOCOLS.register()
@dataclass(frozen=True)
class Strong(Protocol):
    """``models`` under ``configs`` (one per ε; ``eps`` keeps the spec's 0-255 values)."""

    models: tuple[str, ...]
    eps: tuple[float, ...]
    configs: tuple[StrongConfig, ...]
    n: int
    name: str | None = None

    kind = "strong"
    keys = frozenset({"models", "eps", "attacks", "n", *BUDGETS})
    schemas: ClassVar[dict[str, Schema]] = {
        "strong": Schema(
            ("target", "attack"),
            ("accuracy", "clean_accuracy"),
            ("params", "after", "broken", "flags", "eps"),
        )
    }

    table_order = 30

    @classmethod
    def comparison(cls, model: str, records: list[Record]) -> Mapping[str, Any]:
        """The worst case per image at the protocol's headline (first) ε, and the flags."""
        mine = [r for r in T.of(records, "strong") if r["target"] == model and r["headline"]]
        found = min((r["accuracy"] for r in mine), key=lambda rate: rate["rate"], default=None)
        return {"strong": found, "flags": T.flags_of(records, model, "strong")}

    @classmethod
    def markdown(cls, records: list[Record]) -> list[str]:
        strong = T.of(records, "strong")
        if not strong:
            return []
        steps = list(strong[0]["after"])
        rows = []
        for r in strong:
            after = [T.rate_text(r["after"][s]) if s in r["after"] else "—" for s in steps]
            broken = ", ".join(f"{k} {v}" for k, v in r["broken"].items())
            rows.append(
                [
                    r["target"],
                    f"{r['eps']:g}",
                    T.rate_text(r["clean_accuracy"]),
                    *after,
                    broken,
                    f"{r['zero_gradient_share']:.2f}",
                    T.flags_text(r),
                ]
            )
        headers = [
            "model",
            "ε",
            "clean",
            *(f"after {s}" for s in steps),
            "broken by each",
            "zero-grad share",
            "flags",
        ]
        title = "Strong (AutoAttack-style): robust accuracy after each attack, worst case per image"
        return T.section(title, headers, rows)

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str, spec: SpecView) -> Strong:
        """eps: one strength or a list in 0-255 (the first is the headline); attacks: some of
        apgd-ce, apgd-dlr, apgd-t, square, run in that order of listing."""
        eps = entry.get("eps", 8)
        values = eps if isinstance(eps, list) else [eps]
        if not values or not all(type(v) in (int, float) and 0 < v <= 255 for v in values):
            raise ValueError(
                f"{where}: eps must be a strength in 0-255 units or a list of them, "
                "e.g. eps = 8 or eps = [2, 4, 8]"
            )
        models = names(entry, "models", where)
        n = images(entry, where, spec)
        budgets = {k: entry[k] for k in BUDGETS if k in entry}
        attacks = tuple(entry.get("attacks", STANDARD_ATTACKS))
        try:
            configs = tuple(
                StrongConfig(eps=from_255(v), attacks=attacks, **budgets) for v in values
            )
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: {err}") from None
        return cls(models, tuple(values), configs, n, entry.get("name"))

    def check_data(self, *, images: int, size: int, classes: int) -> None:
        """Targeted attacks need at most classes − 1 targets (and APGD-T four classes)."""
        config = self.configs[0]
        targeted = [a for a in config.attacks if a in ("apgd-t", "fab-t")]
        if targeted and config.target_classes > classes - 1:
            raise ValueError(
                f"{self.title}: target_classes = {config.target_classes}, but the data has "
                f"{classes} classes; use target_classes <= {classes - 1}"
            )

    def cells(self, ctx: Context) -> Iterator[Record]:
        for name in self.models:
            cells = [
                self._cell(ctx, name, config, eps, headline=index == 0)
                for index, (config, eps) in enumerate(zip(self.configs, self.eps, strict=True))
            ]
            yield from flag_rising_with_eps(cells, group=lambda r: r["attack"])

    def _cell(
        self, ctx: Context, name: str, config: StrongConfig, eps: float, *, headline: bool
    ) -> Record:
        n = self.n
        cell_key = key(ctx, "strong", ctx.ids([name]), config.to_dict(), n, *ctx.declared(name))

        def compute() -> Record:
            store = ctx.path("strong", config_hash(cell_key))
            result = strong_attack(
                ctx.model(name), ctx.x[:n], ctx.y[:n], config, seed=ctx.seed, store=store
            )
            return {
                "protocol": "strong",
                "target": name,
                "attack": "+".join(config.attacks),
                "eps": eps,
                "params": config.to_dict(),
                **result.to_dict(),
            }

        # not part of the cached cell: which ε is the headline depends on the spec's order
        return {**ctx.record(cell_key, compute), "headline": headline}

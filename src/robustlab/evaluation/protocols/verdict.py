"""Verdict: the strong attacks, the failure checks and their escalation, per model
(:mod:`robustlab.evaluation.escalation`): a robust accuracy with a status that says how far
to trust it. A defended model's undefended base supplies the transfer checks. Each attack
of a cell is stored as it finishes: a stopped cell resumes with the next one.

Spec keys: ``models``; ``eps`` (0-255 for ℓ∞, [0, 1] pixel units for ℓ2); ``norm``;
``version`` (standard, plus, rand); ``budget`` (standard, thorough); ``steps``,
``queries``, ``restarts``, ``target_classes``, ``eot_samples``, ``passes``, ``probe``,
``full_queries``
(AutoAttack's budgets by default; CPU specs name smaller ones, carried in every record);
``n``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from robustlab.evaluation.escalation import Evaluation
from robustlab.evaluation.ladder import REVISION
from robustlab.evaluation.protocols.base import (
    PROTOCOLS,
    Context,
    Protocol,
    Record,
    Schema,
    SpecView,
    images,
    key,
    names,
)
from robustlab.evaluation.verdict import EvaluationConfig
from robustlab.io import config_hash
from robustlab.units import from_255

OPTIONS = (
    *("version", "budget", "steps", "queries", "restarts", "target_classes"),
    *("eot_samples", "passes", "probe", "full_queries"),
)


@PROTOCOLS.register()
@dataclass(frozen=True)
class VerdictProtocol(Protocol):
    """``models`` under one :class:`EvaluationConfig` (``eps`` keeps the spec's value)."""

    models: tuple[str, ...]
    eps: float
    config: EvaluationConfig
    n: int
    name: str | None = None

    kind = "verdict"
    keys = frozenset({"models", "eps", "norm", "n", *OPTIONS})
    schemas: ClassVar[dict[str, Schema]] = {
        "verdict": Schema(
            ("target",), ("robust", "clean"), ("status", "checks", "steps", "first_breakers")
        )
    }

    table_order = 100

    @classmethod
    def comparison(cls, model: str, records: list[Record]) -> Mapping[str, Any]:
        """The lowest verdict (an upper bound) and its status with the deciding check."""
        mine = [r for r in records if r["protocol"] == "verdict" and r["target"] == model]
        if not mine:
            return {}
        verdict = min(mine, key=lambda r: r["robust"]["rate"])
        deciding = verdict.get("deciding") or ""
        status = f"{verdict['status']} ({deciding})" if deciding else str(verdict["status"])
        return {"verdict": verdict["robust"], "status": status}

    @classmethod
    def markdown(cls, records: list[Record]) -> list[str]:
        return markdown(records)

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str, spec: SpecView) -> VerdictProtocol:
        norm = entry.get("norm", "linf")
        eps = entry.get("eps", 8)
        if type(eps) not in (int, float) or not 0 < eps <= (255 if norm == "linf" else 1e6):
            raise ValueError(f"{where}: eps = {eps!r} must be a positive strength, e.g. eps = 8")
        options = {k: entry[k] for k in OPTIONS if k in entry}
        try:
            radius = from_255(eps) if norm == "linf" else float(eps)
            config = EvaluationConfig(eps=radius, norm=norm, **options)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: {err}") from None
        n = images(entry, where, spec)
        return cls(names(entry, "models", where), float(eps), config, n, entry.get("name"))

    def cells(self, ctx: Context) -> Iterator[Record]:
        for name in self.models:
            yield self._cell(ctx, name)

    def _cell(self, ctx: Context, name: str) -> Record:
        n, config = self.n, self.config
        declared = ctx.declared(name)
        cell_key = key(ctx, "verdict", ctx.ids([name]), config.to_dict(), n, *declared, REVISION)

        def compute() -> Record:
            base = ctx.base_of(name)
            evaluation = Evaluation(
                ctx.model(name),
                ctx.x[:n],
                ctx.y[:n],
                config,
                base=ctx.model(base) if base != name else None,
                seed=ctx.seed,
                store=ctx.path("verdict", config_hash(cell_key)),
            )
            verdict = evaluation.run()
            return {"protocol": "verdict", "target": name, "eps": self.eps, **verdict.to_dict()}

        return ctx.record(cell_key, compute)


def markdown(records: list[Record]) -> list[str]:
    """The protocol's table: worst case, status, deciding check, what broke the images."""
    mine = [r for r in records if r["protocol"] == "verdict"]
    if not mine:
        return []
    lines = [
        "## Verdicts: worst case per image, checked and escalated",
        "",
        "| model | ε | robust (upper bound) | clean | status | deciding check | fired | "
        "broken first by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in mine:
        robust, clean = r["robust"], r["clean"]
        breakers = ", ".join(f"{k} {v}" for k, v in r["first_breakers"].items() if v) or "—"
        cells = [
            r["target"],
            f"{r['eps']:g}",
            f"{100 * robust['rate']:.1f}% [{100 * robust['low']:.1f}, {100 * robust['high']:.1f}]",
            f"{100 * clean['rate']:.1f}%",
            r["status"],
            r["deciding"] or "—",
            ", ".join(r["fired"]) or "—",
            breakers,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]

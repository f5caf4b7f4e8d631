"""Decision-based: the Boundary attack (Brendel et al. 2018) on each model; the score is the
median perturbation size it needs (the Defective-CNN paper's table 10)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from robustlab.attacks.base import Params
from robustlab.evaluation.measures import decision_score
from robustlab.evaluation.protocols import tables as T
from robustlab.evaluation.protocols.base import (
    PROTOCOLS,
    Context,
    Protocol,
    Record,
    Schema,
    SpecView,
    count,
    images,
    key,
    names,
)

PARAMS = ("steps", "candidates", "max_queries")


@PROTOCOLS.register()
@dataclass(frozen=True)
class Decision(Protocol):
    """``params``: the Boundary attack's budget as the spec gives it (defaults: the attack's)."""

    models: tuple[str, ...]
    params: Params
    n: int
    name: str | None = None

    kind = "decision"
    keys = frozenset({"models", *PARAMS, "n"})
    schemas: ClassVar[dict[str, Schema]] = {
        "decision": Schema(("target", "attack"), (), ("score", "params"))
    }

    table_order = 60

    @classmethod
    def comparison(cls, model: str, records: list[Record]) -> Mapping[str, Any]:
        """The decision-based score S(M) of the first cell."""
        scores = [r["score"]["score"] for r in T.of(records, "decision") if r["target"] == model]
        return {"decision": scores[0]} if scores else {}

    @classmethod
    def markdown(cls, records: list[Record]) -> list[str]:
        rows = [
            [
                r["target"],
                f"{r['score']['score']:.2e}",
                str(r["score"]["n"]),
                str(r["score"]["failed"]),
                str(r["score"]["median_queries"]),
            ]
            for r in T.of(records, "decision")
        ]
        headers = ["model", "S(M)", "n", "failed", "median queries"]
        return T.section("Decision-based (Boundary): S(M) = median ‖δ‖²/N", headers, rows)

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str, spec: SpecView) -> Decision:
        params: Params = {k: count(entry, k, where, 0) for k in PARAMS if k in entry}
        n = images(entry, where, spec, min(spec.n, 100))
        return cls(names(entry, "models", where), params, n, entry.get("name"))

    def cells(self, ctx: Context) -> Iterator[Record]:
        params, n = dict(self.params), self.n
        for name in self.models:

            def compute(name: str = name) -> Record:
                model = ctx.model(name)
                score = decision_score(model, ctx.x[:n], ctx.y[:n], params=params, seed=ctx.seed)
                return {
                    "protocol": "decision",
                    "target": name,
                    "attack": "boundary",
                    "params": params,
                    "score": score.to_dict(),
                }

            yield ctx.record(key(ctx, "decision", ctx.ids([name]), params, n), compute)

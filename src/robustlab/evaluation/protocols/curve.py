"""Curve: robust accuracy against ε. Each model's smallest breaking ε per image is found by
bisection with APGD-CE (:mod:`robustlab.evaluation.curve`), so the whole curve costs one
search; the levels must be multiples of ``eps_max / 2**search_steps``, where the bisection
is exact. One cell per model (cached), one ``curve`` record gathering them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from robustlab.evaluation.curve import EpsilonSearch, accuracy_at, save_success, smallest_eps
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
from robustlab.io import config_hash
from robustlab.models.cost import total
from robustlab.units import RECORD_UNITS, from_255
from robustlab.version import __version__

DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32)  # 0-255 units; those up to eps_max


@PROTOCOLS.register()
@dataclass(frozen=True)
class Curve(Protocol):
    """``search`` in [0, 1] units; ``levels`` in 0-255 units (as the record shows them)."""

    models: tuple[str, ...]
    search: EpsilonSearch
    levels: tuple[float, ...]
    n: int
    name: str | None = None

    kind = "curve"
    keys = frozenset({"models", "eps_max", "search_steps", "eps", "steps", "n"})
    schemas: ClassVar[dict[str, Schema]] = {
        "curve_cell": Schema(("target",), (), ("rates", "success_file")),
        "curve": Schema(("attack",), (), ("curves", "eps_max", "resolution", "steps", "n")),
    }

    table_order = 70

    @classmethod
    def markdown(cls, records: list[Record]) -> list[str]:
        title = "Robust accuracy against ε (APGD-CE; smallest ε per image by bisection)"
        return T.curve_section(records, "curve", title, "ε")

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str, spec: SpecView) -> Curve:
        models = names(entry, "models", where)
        eps_max = entry.get("eps_max", 32)
        if type(eps_max) not in (int, float) or not 0 < eps_max <= 255:
            raise ValueError(f"{where}: eps_max = {eps_max!r} must be in 0-255 units, e.g. 32")
        search_steps = entry.get("search_steps", 5)
        if type(search_steps) is not int or not 1 <= search_steps <= 20:
            raise ValueError(
                f"{where}: search_steps = {search_steps!r} must be a positive integer up to 20"
            )
        steps, n = count(entry, "steps", where, 20), images(entry, where, spec)
        resolution = eps_max / 2**search_steps
        levels = entry.get("eps", [e for e in DEFAULT_LEVELS if e <= eps_max])
        if (
            not isinstance(levels, list)
            or not levels
            or not all(
                type(v) in (int, float)
                and 0 < v <= eps_max
                and abs(v / resolution - round(v / resolution)) < 1e-9
                for v in levels
            )
        ):
            raise ValueError(
                f"{where}: eps = {levels!r}: each level must be in (0, eps_max] and a multiple "
                f"of eps_max / 2**search_steps = {resolution:g}, where the bisection is exact"
            )
        search = EpsilonSearch(eps_max=from_255(eps_max), search_steps=search_steps, steps=steps)
        return cls(
            models, search, tuple(float(v) for v in levels), min(n, spec.n), entry.get("name")
        )

    def cells(self, ctx: Context) -> Iterator[Record]:
        curves, costs = {}, {}
        for name in self.models:
            cell = self._cell(ctx, name)
            curves[name] = {
                str(v): rate for v, rate in zip(self.levels, cell["rates"], strict=True)
            }
            costs[name] = cell["cost"]
        search = self.search
        yield {
            "protocol": "curve",
            "attack": "apgd-ce",
            "eps_max": search.eps_max * 255,
            "resolution": search.resolution * 255,
            "steps": search.steps,
            "n": self.n,
            "curves": curves,
            "cost": total(list(costs.values())),
            "cost_by_model": costs,
            "seed": ctx.seed,
            "units": RECORD_UNITS,
            "version": __version__,
        }

    def _cell(self, ctx: Context, name: str) -> Record:
        search, levels, n = self.search, list(self.levels), self.n
        cell_key = key(
            ctx,
            "curve",
            ctx.ids([name]),
            search.eps_max,
            search.search_steps,
            search.steps,
            levels,
            n,
            *ctx.declared(name),
        )

        def compute() -> Record:
            star = smallest_eps(ctx.model(name), ctx.x[:n], ctx.y[:n], search, seed=ctx.seed)
            path = ctx.path("curves", f"{name}-{config_hash(cell_key)}.npz")
            save_success(path, star, levels, ctx.indices[:n])
            rates = accuracy_at(star, [from_255(v) for v in levels])
            return {
                "protocol": "curve_cell",
                "target": name,
                "success_file": str(path),
                "rates": [r.to_dict() for r in rates.values()],
            }

        return ctx.record(cell_key, compute)

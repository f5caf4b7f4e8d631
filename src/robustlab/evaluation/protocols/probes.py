"""Probes over images every model classifies correctly: additive Gaussian ``noise`` of each
σ (0-255 units; the Defective-CNN paper's fig. 4) and the ``shuffle`` probe of k×k patches
(its shape-bias test, table 12). One cell per protocol, a curve per model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from robustlab.evaluation.measures import noise_curve, shuffle_probe
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
)
from robustlab.evaluation.stats import Rate

CURVES = Schema(other=("curves",))
Probe = Callable[[dict[str, nn.Module]], dict[str, dict[Any, Rate]]]


def _levels(entry: Mapping[str, Any], field: str, where: str, default: list[Any]) -> list[Any]:
    values = entry.get(field, default)
    if (
        not isinstance(values, list)
        or not values
        or not all(type(v) in (int, float) for v in values)
    ):
        raise ValueError(f"{where}: {field} must be a non-empty list of numbers")
    return values


def probe_cell(
    ctx: Context, kind: str, models: tuple[str, ...], levels: list[Any], probe: Probe
) -> Record:
    """One cell of a per-level accuracy curve of ``models``."""

    def compute() -> Record:
        found = probe({m: ctx.model(m) for m in models})
        curves = {
            name: {str(k): rate.to_dict() for k, rate in row.items()} for name, row in found.items()
        }
        return {"protocol": kind, "curves": curves}

    return ctx.record(key(ctx, kind, ctx.ids(list(models)), levels), compute)


@PROTOCOLS.register()
@dataclass(frozen=True)
class Noise(Protocol):
    models: tuple[str, ...]
    sigmas: tuple[float, ...]
    name: str | None = None

    kind = "noise"
    keys = frozenset({"models", "sigmas"})
    schemas: ClassVar[dict[str, Schema]] = {"noise": CURVES}

    table_order = 80

    @classmethod
    def comparison(cls, model: str, records: list[Record]) -> Mapping[str, Any]:
        """Accuracy under Gaussian noise of σ = 32 (0-255), where a cell measured it."""
        found = [
            r["curves"][model]["32.0"]
            for r in T.of(records, "noise")
            if "32.0" in r["curves"].get(model, {})
        ]
        return {"noise32": found[0]} if found else {}

    @classmethod
    def markdown(cls, records: list[Record]) -> list[str]:
        title = "Additive Gaussian noise: accuracy on images every model gets right"
        return T.curve_section(records, "noise", title, "σ")

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str, spec: SpecView) -> Noise:
        if "sigmas" not in entry:
            raise ValueError(f"{where}: needs 'sigmas', e.g. sigmas = [8, 16, 32] (0-255 units)")
        sigmas = tuple(float(s) for s in _levels(entry, "sigmas", where, []))
        return cls(names(entry, "models", where), sigmas, entry.get("name"))

    def cells(self, ctx: Context) -> Iterator[Record]:
        sigmas = list(self.sigmas)

        def probe(models: dict[str, nn.Module]) -> dict[str, dict[Any, Rate]]:
            return dict(noise_curve(models, ctx.x, ctx.y, sigmas=sigmas, seed=ctx.seed))

        yield probe_cell(ctx, "noise", self.models, sigmas, probe)


@PROTOCOLS.register()
@dataclass(frozen=True)
class Shuffle(Protocol):
    models: tuple[str, ...]
    ks: tuple[int, ...] = (2, 4, 8)
    name: str | None = None

    kind = "shuffle"
    keys = frozenset({"models", "ks"})
    schemas: ClassVar[dict[str, Schema]] = {"shuffle": CURVES}

    table_order = 90

    @classmethod
    def markdown(cls, records: list[Record]) -> list[str]:
        title = "Patch shuffle: accuracy on images every model gets right"
        return T.curve_section(records, "shuffle", title, "k")

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str, spec: SpecView) -> Shuffle:
        levels = _levels(entry, "ks", where, [2, 4, 8])
        if not all(type(k) is int and k >= 1 for k in levels):
            raise ValueError(f"{where}: ks = {levels!r} must be positive integers, e.g. [2, 4, 8]")
        ks = tuple(levels)
        return cls(names(entry, "models", where), ks, entry.get("name"))

    def check_data(self, *, images: int, size: int, classes: int) -> None:
        """A k × k grid needs at least one pixel per patch: k <= the image size."""
        if max(self.ks) > size:
            raise ValueError(
                f"{self.title}: ks = {list(self.ks)}: a {max(self.ks)} × {max(self.ks)} grid "
                f"does not fit {size} × {size} images (no patch would move); use k <= {size}"
            )

    def cells(self, ctx: Context) -> Iterator[Record]:
        ks = list(self.ks)

        def probe(models: dict[str, nn.Module]) -> dict[str, dict[Any, Rate]]:
            return dict(shuffle_probe(models, ctx.x, ctx.y, ks=ks, seed=ctx.seed))

        yield probe_cell(ctx, "shuffle", self.models, ks, probe)

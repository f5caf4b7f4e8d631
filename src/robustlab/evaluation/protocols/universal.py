"""Universal perturbations (the SFR paper's setting): a perturbation computed once per
attack, strength ξ and victim (the undefended base, or the defended model itself: a
white-box secondary attack), scored on each model as fooling rate and restoration accuracy;
``perturbations`` files (``robustlab universal import``) are scored as they are.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from robustlab.attacks.universal import UNIVERSAL_ATTACKS, UniversalPerturbation
from robustlab.evaluation.protocols import tables as T
from robustlab.evaluation.protocols.base import (
    PROTOCOLS,
    Context,
    Protocol,
    Record,
    Schema,
    SpecView,
    count,
    key,
    names,
    with_shared_cost,
)
from robustlab.evaluation.universal import universal_scores
from robustlab.io import RobustlabError
from robustlab.units import to_unit

AGAINST = ("base", "defended")


@PROTOCOLS.register()
@dataclass(frozen=True)
class Universal(Protocol):
    """``xis`` and ``options`` keep the spec's 0-255 values (the universal attack converts
    them when it is built); the first ξ is the training strength."""

    models: tuple[str, ...]
    attacks: tuple[str, ...] = ()
    xis: tuple[float, ...] = (10,)
    against: tuple[str, ...] = AGAINST
    attack_images: int = 256
    options: Mapping[str, Mapping[str, Any]] | None = None
    perturbations: tuple[str, ...] = ()
    name: str | None = None

    kind = "universal"
    keys = frozenset(
        {"models", "attacks", "xis", "against", "attack_images", "options", "perturbations"}
    )
    schemas: ClassVar[dict[str, Schema]] = {
        "universal": Schema(
            ("target", "attack", "against"),
            ("fooling_rate", "perturbed_accuracy", "clean_accuracy"),
            ("xi", "restoration"),
        )
    }

    table_order = 50

    @classmethod
    def comparison(cls, model: str, records: list[Record]) -> Mapping[str, Any]:
        """The worst restoration accuracy over attacks and strengths."""
        return {"universal": T.worst(records, model, "universal", "restoration")}

    @classmethod
    def markdown(cls, records: list[Record]) -> list[str]:
        rows = [
            [
                r["target"],
                r["attack"],
                f"{r['xi']:g}",
                r["against"],
                T.rate_text(r["fooling_rate"]),
                T.rate_text(r["perturbed_accuracy"]),
                T.rate_text(r["restoration"]),
            ]
            for r in T.of(records, "universal")
        ]
        headers = [
            "model",
            "attack",
            "ξ",
            "computed against",
            "fooling rate",
            "perturbed accuracy",
            "restoration",
        ]
        title = "Universal perturbations: fooling rate and restoration accuracy"
        return T.section(title, headers, rows)

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str, spec: SpecView) -> Universal:
        files = _files(entry, where)
        attacks = names(entry, "attacks", where, required=False)
        if not attacks and not files:
            raise ValueError(f"{where}: needs 'attacks' or 'perturbations'")
        for attack in attacks:
            if attack not in UNIVERSAL_ATTACKS:
                raise ValueError(
                    f"{where}: unknown universal attack {attack!r}; use one of "
                    f"{', '.join(UNIVERSAL_ATTACKS)}"
                )
        xis = entry.get("xis", [10])
        if not xis or not all(isinstance(v, int | float) and 0 < v <= 255 for v in xis):
            raise ValueError(f"{where}: xis must be strengths in 0-255 units, e.g. [10, 16]")
        options = entry.get("options", {})
        for attack, params in options.items():
            if attack not in attacks:
                raise ValueError(f"{where}: options for {attack!r}, which attacks does not list")
            try:  # the parameters fail now, not after the models trained
                UNIVERSAL_ATTACKS.get(attack).check(**to_unit(params))
            except ValueError as err:
                raise ValueError(f"{where}: options.{attack}: {err}") from None
        against = entry.get("against", list(AGAINST))
        if not against or set(against) - set(AGAINST):
            raise ValueError(f"{where}: against must list 'base' and/or 'defended'")
        return cls(
            models=names(entry, "models", where),
            attacks=attacks,
            xis=tuple(xis),
            against=tuple(against),
            attack_images=count(entry, "attack_images", where, 256),
            options={a: dict(p) for a, p in options.items()},
            perturbations=files,
            name=entry.get("name"),
        )

    def cells(self, ctx: Context) -> Iterator[Record]:
        yield from self._imported(ctx)
        for attack in self.attacks:
            for xi in self.xis:
                for against in self.against:
                    for name in self.models:
                        if against == "defended" and ctx.base_of(name) == name:
                            continue  # an undefended model: the same as against its base
                        yield self._cell(ctx, name, attack, xi, against)

    def _cell(self, ctx: Context, name: str, attack: str, xi: float, against: str) -> Record:
        options = dict((self.options or {}).get(attack, {}))

        def compute() -> Record:
            model, base = ctx.model(name), ctx.model(ctx.base_of(name))
            victim = name if against == "defended" else ctx.base_of(name)
            found = ctx.universal_perturbation(victim, attack, xi, self.attack_images, options)
            scores = universal_scores(model, base, ctx.x, ctx.y, found.delta)
            record: Record = {
                "protocol": "universal",
                "target": name,
                "attack": attack,
                "xi": xi,
                "against": against,
                **scores.to_dict(),
            }
            return with_shared_cost(record, "perturbation", found.config.get("cost"))

        ids = ctx.ids([name, ctx.base_of(name)])
        cell_key = key(ctx, "universal", ids, attack, xi, against, self.attack_images, options)
        return ctx.record(cell_key, compute)

    def _imported(self, ctx: Context) -> Iterator[Record]:
        """Cells of perturbation files, scored as they are (keyed by the file's content)."""
        for file in self.perturbations:
            digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16]
            for name in self.models:

                def compute(name: str = name, file: str = file) -> Record:
                    found = UniversalPerturbation.load(file)
                    found.check_fits(ctx.x.shape[1:], file)
                    model, base = ctx.model(name), ctx.model(ctx.base_of(name))
                    scores = universal_scores(model, base, ctx.x, ctx.y, found.delta)
                    return {
                        "protocol": "universal",
                        "target": name,
                        "attack": f"file:{Path(file).name}",
                        "xi": 255 * scores.linf,
                        "against": "imported",
                        **scores.to_dict(),
                    }

                ids = ctx.ids([name, ctx.base_of(name)])
                yield ctx.record(key(ctx, "universal-file", ids, digest), compute)


def _files(entry: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """``perturbations``: files in robustlab's format, each read now (a bad one fails here)."""
    files = entry.get("perturbations", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ValueError(f"{where}: perturbations must be a list of file names")
    for name in files:
        try:
            UniversalPerturbation.load(name)
        except RobustlabError as err:
            raise ValueError(f"{where}: perturbations: {err}") from None
    return tuple(files)

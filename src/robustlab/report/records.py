"""The record schema: what each protocol's result cell carries on disk.

A record is the JSON form of a typed result (``Rate``, ``TransferResult``, ``AdaptiveResult``,
``StrongResult``, ``UniversalResult``, ``DecisionResult``, ...) plus the names of the cell: its
protocol, models and attack. The executor checks every record against its :class:`Schema`
before writing it and before gathering ``results.json``; the report checks what it reads, so
an old or damaged file fails with one line naming the record and the field, not a KeyError
deep in a table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RATE_KEYS = ("hits", "n", "rate", "low", "high")


@dataclass(frozen=True)
class Schema:
    """Required fields of one protocol's records: ``names`` (strings naming models and
    attacks), ``rates`` (each a Rate: hits, n, rate, low, high) and ``other`` fields."""

    names: tuple[str, ...] = ()
    rates: tuple[str, ...] = ()
    other: tuple[str, ...] = ()


_TRANSFER = Schema(("source", "target", "attack"), ("accuracy", "clean_accuracy", "defense_rate"),
                   ("params",))  # fmt: skip
_CURVES = Schema(other=("curves",))
SCHEMAS: dict[str, Schema] = {
    "transfer": _TRANSFER,
    "ensemble_transfer": _TRANSFER,
    "whitebox": Schema(("target", "attack"), ("accuracy",),
                       ("params", "flags", "zero_gradient_share")),
    "adaptive": Schema(("target", "attack", "surface"), ("accuracy", "clean_accuracy"),
                       ("params", "flags", "loss_rises", "masking")),
    "strong": Schema(("target", "attack"), ("accuracy", "clean_accuracy"),
                     ("params", "after", "broken", "flags", "eps")),
    "curve_cell": Schema(("target",), (), ("rates", "success_file")),
    "curve": Schema(("attack",), (), ("curves", "eps_max", "resolution", "steps", "n")),
    "universal": Schema(("target", "attack", "against"),
                        ("fooling_rate", "perturbed_accuracy", "clean_accuracy"),
                        ("xi", "restoration")),
    "decision": Schema(("target", "attack"), (), ("score", "params")),
    "noise": _CURVES,
    "shuffle": _CURVES,
    "summary": Schema(("target",), ("clean_accuracy",),
                      ("ms_per_image", "cost_ratio", "added_parameters")),
}  # fmt: skip


def record_problem(record: Mapping[str, Any]) -> str | None:
    """What is wrong with ``record`` in a few words, or None when it fits its schema."""
    protocol = record.get("protocol")
    schema = SCHEMAS.get(str(protocol))
    if schema is None:
        return f"unknown protocol {protocol!r}"
    for key in (*schema.names, *schema.rates, *schema.other):
        if key not in record:
            return f"{protocol} record without {key!r}"
    for key in schema.names:
        if not isinstance(record[key], str):
            return f"{protocol} record: {key} is not a name ({record[key]!r})"
    for key in schema.rates:
        rate = record[key]
        if not isinstance(rate, Mapping) or any(k not in rate for k in RATE_KEYS):
            return f"{protocol} record: {key} is not a rate with {', '.join(RATE_KEYS)}"
    flags = record.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        return f"{protocol} record: flags must be a list of names"
    return None


def check_record(record: Mapping[str, Any]) -> None:
    """Raise ValueError naming the problem when ``record`` does not fit its schema."""
    problem = record_problem(record)
    if problem is not None:
        raise ValueError(problem)

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
from typing import Any

from robustlab.evaluation.protocols import PROTOCOLS, Schema

RATE_KEYS = ("hits", "n", "rate", "low", "high")


# every protocol's record schemas sit beside it (robustlab.evaluation.protocols); the summary
# record is the comparison table's own
SCHEMAS: dict[str, Schema] = {
    "summary": Schema(
        ("target",),
        ("clean_accuracy",),
        ("ms_per_image", "cost_ratio", "passes_per_image", "passes_ratio", "added_parameters"),
    ),
    **{
        kind: schema
        for protocol in PROTOCOLS
        for kind, schema in PROTOCOLS.get(protocol).schemas.items()
    },
}


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

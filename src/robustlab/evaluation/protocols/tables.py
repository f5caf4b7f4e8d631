"""What every protocol's markdown table is made of: rate cells, escaped cells, a section.

Each protocol module writes its own table (``Protocol.markdown``) from its records with these;
``robustlab.report.tables`` puts the sections together in ``Protocol.table_order``.
"""

from __future__ import annotations

from typing import Literal

from robustlab.evaluation.protocols.base import RateField, Record
from robustlab.evaluation.stats import IntervalRecord


def rate_text(rate: IntervalRecord) -> str:
    """A rate as ``percent [low, high] n=N`` (Wilson 95 % interval), "n/a" for no images."""
    if not rate["n"]:
        return "n/a"
    low, high = 100 * rate["low"], 100 * rate["high"]
    return f"{100 * rate['rate']:.1f} [{low:.1f}, {high:.1f}] n={rate['n']}"


def md_cell(text: str) -> str:
    """A markdown table cell: "|" escaped and line breaks as spaces, so no cell breaks a row."""
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def section(title: str, headers: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown section: ``## title``, a header row and one row per entry (none if empty)."""
    if not rows:
        return []
    return [
        f"## {title}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows),
        "",
    ]


def of(records: list[Record], *kinds: str) -> list[Record]:
    """The records of these kinds, in order."""
    return [r for r in records if r["protocol"] in kinds]


def worst(
    records: list[Record], model: str, kind: str, metric: Literal[RateField, "restoration"]
) -> IntervalRecord | None:
    """The lowest ``metric`` rate of ``model``'s records of ``kind`` that rest on images."""
    found = [r[metric] for r in of(records, kind) if r.get("target") == model and r[metric]["n"]]
    return min(found, key=lambda rate: rate["rate"]) if found else None


def flags_of(records: list[Record], model: str, kind: str) -> list[str]:
    """Every flag ``model``'s records of ``kind`` carry."""
    return [f for r in of(records, kind) if r.get("target") == model for f in r.get("flags", [])]


def flags_text(record: Record) -> str:
    return ", ".join(record.get("flags", [])) or "—"


def curve_levels(record: Record) -> list[str]:
    """The levels (σ, k) of a curve record in numeric order: JSON files keep keys as sorted
    strings, so "12.0" would otherwise come before "2.0"."""
    return sorted(next(iter(record["curves"].values())), key=float)


def curve_section(records: list[Record], kind: str, title: str, unit: str) -> list[str]:
    """One table per record of a curve-like kind: a row per model, a column per level."""
    lines: list[str] = []
    for r in of(records, kind):
        levels = curve_levels(r)
        rows = [[m, *(rate_text(row[lv]) for lv in levels)] for m, row in r["curves"].items()]
        lines += section(title, ["model", *(f"{unit}={lv}" for lv in levels)], rows)
    return lines

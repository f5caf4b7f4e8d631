"""Records -> tables: markdown (results.md), CSV (results.csv) and the comparison table.

A record is one result cell as the executor writes it (``records/<hash>.json``). Nothing
here computes a result: it only reads records.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from robustlab.evaluation.protocols import PROTOCOLS
from robustlab.evaluation.protocols.base import Record
from robustlab.evaluation.protocols.tables import md_cell
from robustlab.evaluation.protocols.tables import rate_text as _rate_text
from robustlab.evaluation.stats import IntervalRecord, RateRecord
from robustlab.io import atomic_write


def write_csv(path: Path, records: list[Record]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["protocol", "source", "target", "attack", "metric", "hits", "n", "rate", "low", "high"]
    )
    for r in records:
        for metric, rate in _flat_rates(r):
            writer.writerow(
                [
                    r["protocol"],
                    csv_text(r.get("source", "")),
                    csv_text(r.get("target", "")),
                    csv_text(r.get("attack", "")),
                    csv_text(metric),
                    rate["hits"],
                    rate["n"],
                    rate["rate"],
                    rate["low"],
                    rate["high"],
                ]
            )
    with atomic_write(path, "w") as handle:
        handle.write(buffer.getvalue())


def csv_text(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string that starts like a formula ("=",
    "+", "-", "@", a tab or a carriage return) gets a leading apostrophe (OWASP's advice)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _flat_rates(record: Record) -> Iterator[tuple[str, RateRecord]]:
    for metric in ("defense_rate", "accuracy", "clean_accuracy"):
        if metric in record:
            yield metric, record[metric]
    for model, row in record.get("curves", {}).items():
        for level, rate in row.items():
            yield f"{model}@{level}", rate


def markdown(records: list[Record]) -> str:
    """Tables a reviewer can read: the comparison first, then each protocol's own (written by
    its module, in ``table_order``), rates with Wilson 95 % intervals."""
    lines: list[str] = comparison_markdown(comparison_rows(records))
    kinds = sorted(PROTOCOLS, key=lambda kind: PROTOCOLS.get(kind).table_order)
    for kind in kinds:
        lines += PROTOCOLS.get(kind).markdown(records)
    return "\n".join(lines)


# --- the comparison table: one row per model, one column per protocol ---------------------


@dataclass(frozen=True)
class ComparisonRow:
    """One model's worst case under each protocol (rates as record dicts, None if not run)."""

    model: str
    defense: str = "—"  # what the row's defense is, and its attack surface
    clean: RateRecord | None = None
    transfer: RateRecord | None = None  # worst success defense rate over sources and attacks
    whitebox: RateRecord | None = None  # worst accuracy over white-box attacks (plain gradients)
    adaptive: RateRecord | None = None  # worst accuracy over adaptive attacks (BPDA/EOT)
    strong: RateRecord | None = None  # AutoAttack-style worst case per image, at the headline ε
    universal: IntervalRecord | None = None  # worst restoration accuracy over attacks and strengths
    decision: float | None = None  # S(M)
    noise32: RateRecord | None = None  # accuracy under Gaussian noise σ=32
    ms_per_image: float | None = None
    cost_ratio: float | None = None  # ms/image relative to the undefended base
    passes: float | None = None  # network passes per prediction, counted
    passes_ratio: float | None = None  # relative to the undefended base
    added_parameters: int | None = None
    flags: tuple[str, ...] = ()
    verdict: RateRecord | None = None  # the verdict's worst case per image over every attack run
    status: str = "—"  # reliable | resolved | unreliable, and the deciding check
    # protocol columns that come after the flags (the older columns keep their places)


COMPARISON_HEADERS = (
    "model",
    "defense",
    "clean",
    "transfer (worst)",
    "white-box",
    "adaptive",
    "strong",
    "universal restoration",
    "decision S(M)",
    "noise σ=32",
    "cost/image: ms, passes (×base)",
    "added params",
    "flags",
    "verdict (upper bound)",
    "status (deciding check)",
)


def comparison_rows(records: list[Record]) -> list[ComparisonRow]:
    """Rows for every model with a summary record, in the order of those records: the
    summary (the executor's own cell) gives clean accuracy and cost, each protocol its
    columns (``Protocol.comparison``); flags are pooled over the protocols."""
    rows = []
    for summary in (r for r in records if r["protocol"] == "summary"):
        name = summary["target"]
        row = ComparisonRow(
            model=name,
            defense=summary.get("defense", "—"),
            clean=summary["clean_accuracy"],
            ms_per_image=summary["ms_per_image"],
            cost_ratio=summary["cost_ratio"],
            passes=summary["passes_per_image"],
            passes_ratio=summary["passes_ratio"],
            added_parameters=summary["added_parameters"],
        )
        flags: set[str] = set()
        for kind in PROTOCOLS:
            cells = dict(PROTOCOLS.get(kind).comparison(name, records))
            flags.update(str(f) for f in cells.pop("flags", None) or ())
            row = replace(row, **cells)
        rows.append(replace(row, flags=tuple(sorted(flags))))
    return rows


def comparison_markdown(rows: list[ComparisonRow]) -> list[str]:
    if not rows:
        return []
    lines = [
        "## Comparison: every defense under every protocol (worst case per column)",
        "",
        "| " + " | ".join(COMPARISON_HEADERS) + " |",
        "|" + "---|" * len(COMPARISON_HEADERS),
    ]
    for row in rows:
        cells = [row.model, row.defense] + [
            _rate_text(rate) if rate is not None else "—"
            for rate in (
                row.clean,
                row.transfer,
                row.whitebox,
                row.adaptive,
                row.strong,
                row.universal,
            )
        ]
        cells.append(f"{row.decision:.2e}" if row.decision is not None else "—")
        cells.append(_rate_text(row.noise32) if row.noise32 is not None else "—")
        cells.append(cost_text(row))
        cells.append(str(row.added_parameters) if row.added_parameters is not None else "—")
        cells.append(", ".join(row.flags) or "—")
        cells.append(_rate_text(row.verdict) if row.verdict is not None else "—")
        cells.append(row.status)
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    lines += [
        "",
        "Universal restoration: (clean + perturbed top-1) / (2 × the base model's clean "
        "top-1), interval from the pooled hits. Strong: APGD-CE, APGD-T and Square, worst case "
        "per image, at the protocol's first ε. Flags come from the white-box, adaptive and "
        "strong cells. Verdict: the worst case per image over every attack the verdict protocol "
        "ran (its escalation included), an upper bound; its status says whether the failure "
        "checks passed (reliable), passed after escalation (resolved), or not (unreliable, "
        "with the check that decides it).",
        "",
    ]
    return lines


def cost_text(row: ComparisonRow) -> str:
    """Inference cost per image: wall ms and counted network passes, each × the base's."""
    if row.ms_per_image is None:
        return "—"
    ms_ratio = f" (×{row.cost_ratio:.1f})" if row.cost_ratio is not None else ""
    text = f"{row.ms_per_image:.2f} ms{ms_ratio}"
    if row.passes is not None:
        ratio = f" (×{row.passes_ratio:g})" if row.passes_ratio is not None else ""
        text += f", {row.passes:g} passes{ratio}"
    return text

"""Records -> tables: markdown (results.md), CSV (results.csv) and the comparison table.

A record is one result cell as the executor writes it (``records/<hash>.json``). Nothing
here computes a result: it only reads records.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustlab.evaluation.protocols import verdict as verdict_protocol
from robustlab.io import atomic_write

Record = dict[str, Any]


def curve_levels(record: Record) -> list[str]:
    """The levels (σ, k) of a curve record in numeric order: JSON files keep keys as sorted
    strings, so "12.0" would otherwise come before "2.0"."""
    return sorted(next(iter(record["curves"].values())), key=float)


def _rate_text(rate: dict[str, Any]) -> str:
    if not rate["n"]:
        return "n/a"
    low, high = 100 * rate["low"], 100 * rate["high"]
    return f"{100 * rate['rate']:.1f} [{low:.1f}, {high:.1f}] n={rate['n']}"


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


def md_cell(text: str) -> str:
    """A markdown table cell: "|" escaped and line breaks as spaces, so no cell breaks a row."""
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _flat_rates(record: Record) -> Iterator[tuple[str, dict[str, Any]]]:
    for metric in ("defense_rate", "accuracy", "clean_accuracy"):
        if metric in record:
            yield metric, record[metric]
    for model, row in record.get("curves", {}).items():
        for level, rate in row.items():
            yield f"{model}@{level}", rate


def markdown(records: list[Record]) -> str:
    """Tables a reviewer can read: the comparison first, then one per protocol, rates with
    Wilson 95 % intervals."""
    lines: list[str] = comparison_markdown(comparison_rows(records))
    for section in (
        _transfer_section,
        _whitebox_section,
        _strong_section,
        _adaptive_section,
        _universal_section,
        _decision_section,
        _curve_sections,
        verdict_protocol.markdown,
    ):
        lines += section(records)
    return "\n".join(lines)


def _table(title: str, headers: list[str], rows: list[list[str]]) -> list[str]:
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


def _of(records: list[Record], *protocols: str) -> list[Record]:
    return [r for r in records if r["protocol"] in protocols]


def _flags(record: Record) -> str:
    return ", ".join(record.get("flags", [])) or "—"


def _losses(record: Record) -> str:
    return f"{record['loss_clean']:.2f} → {record['loss_adversarial']:.2f}"


def _transfer_section(records: list[Record]) -> list[str]:
    rows = [
        [
            r["source"],
            r["target"],
            r["attack"],
            _rate_text(r["defense_rate"]),
            _rate_text(r["accuracy"]),
            _rate_text(r["clean_accuracy"]),
        ]
        for r in _of(records, "transfer", "ensemble_transfer")
    ]
    return _table(
        "Transfer: success defense rate (filtered, appendix A.7) and unfiltered accuracy",
        ["source", "target", "attack", "defense rate", "accuracy", "clean accuracy"],
        rows,
    )


def _whitebox_section(records: list[Record]) -> list[str]:
    rows = [
        [r["target"], r["attack"], _rate_text(r["accuracy"]), _flags(r)]
        for r in _of(records, "whitebox")
    ]
    return _table("White-box accuracy", ["model", "attack", "accuracy", "flags"], rows)


def _strong_section(records: list[Record]) -> list[str]:
    return strong_markdown(_of(records, "strong"))


def _adaptive_section(records: list[Record]) -> list[str]:
    rows = []
    for r in _of(records, "adaptive"):
        surface = r["surface"] + (f" ({r['bpda_part']})" if r["bpda_part"] else "")
        moved = _rate_text(r["transfer_accuracy"]) if r["transfer_accuracy"] else "—"
        rows.append(
            [
                r["target"],
                r["attack"],
                surface,
                _rate_text(r["accuracy"]),
                _rate_text(r["clean_accuracy"]),
                moved,
                _rate_text(r["noise_accuracy"]),
                f"{r['zero_gradient_share']:.2f}",
                _losses(r),
                _flags(r),
            ]
        )
    headers = [
        "model",
        "attack",
        "surface",
        "accuracy",
        "clean",
        "transfer from base",
        "±ε noise",
        "zero-grad share",
        "loss clean → adv",
        "flags",
    ]
    return _table("Adaptive white-box: the attack through the whole defended model", headers, rows)


def _universal_section(records: list[Record]) -> list[str]:
    rows = [
        [
            r["target"],
            r["attack"],
            f"{r['xi']:g}",
            r["against"],
            _rate_text(r["fooling_rate"]),
            _rate_text(r["perturbed_accuracy"]),
            _rate_text(r["restoration"]),
        ]
        for r in _of(records, "universal")
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
    return _table("Universal perturbations: fooling rate and restoration accuracy", headers, rows)


def _decision_section(records: list[Record]) -> list[str]:
    rows = [
        [
            r["target"],
            f"{r['score']['score']:.2e}",
            str(r["score"]["n"]),
            str(r["score"]["failed"]),
            str(r["score"]["median_queries"]),
        ]
        for r in _of(records, "decision")
    ]
    headers = ["model", "S(M)", "n", "failed", "median queries"]
    return _table("Decision-based (Boundary): S(M) = median ‖δ‖²/N", headers, rows)


def _curve_sections(records: list[Record]) -> list[str]:
    lines: list[str] = []
    for kind, title, unit in (
        ("curve", "Robust accuracy against ε (APGD-CE; smallest ε per image by bisection)", "ε"),
        ("noise", "Additive Gaussian noise: accuracy on images every model gets right", "σ"),
        ("shuffle", "Patch shuffle: accuracy on images every model gets right", "k"),
    ):
        for r in _of(records, kind):
            levels = curve_levels(r)
            rows = [[m, *(_rate_text(row[lv]) for lv in levels)] for m, row in r["curves"].items()]
            lines += _table(title, ["model", *(f"{unit}={lv}" for lv in levels)], rows)
    return lines


def strong_markdown(strong: list[Record]) -> list[str]:
    """The strong protocol: robust accuracy after each attack of the sequence."""
    if not strong:
        return []
    steps = list(strong[0]["after"])
    rows = []
    for r in strong:
        after = [_rate_text(r["after"][s]) if s in r["after"] else "—" for s in steps]
        broken = ", ".join(f"{k} {v}" for k, v in r["broken"].items())
        rows.append(
            [
                r["target"],
                f"{r['eps']:g}",
                _rate_text(r["clean_accuracy"]),
                *after,
                broken,
                f"{r['zero_gradient_share']:.2f}",
                _flags(r),
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
    return _table(title, headers, rows)


# --- the comparison table: one row per model, one column per protocol ---------------------


@dataclass(frozen=True)
class ComparisonRow:
    """One model's worst case under each protocol (rates as record dicts, None if not run)."""

    model: str
    defense: str = "—"  # what the row's defense is, and its attack surface
    clean: Record | None = None
    transfer: Record | None = None  # worst success defense rate over sources and attacks
    whitebox: Record | None = None  # worst accuracy over white-box attacks (plain gradients)
    adaptive: Record | None = None  # worst accuracy over adaptive attacks (BPDA/EOT)
    strong: Record | None = None  # AutoAttack-style worst case per image, at the headline ε
    universal: Record | None = None  # worst restoration accuracy over attacks and strengths
    decision: float | None = None  # S(M)
    noise32: Record | None = None  # accuracy under Gaussian noise σ=32
    ms_per_image: float | None = None
    cost_ratio: float | None = None  # ms/image relative to the undefended base
    passes: float | None = None  # network passes per prediction, counted
    passes_ratio: float | None = None  # relative to the undefended base
    added_parameters: int | None = None
    flags: tuple[str, ...] = ()
    verdict: Record | None = None  # the verdict's worst case per image over every attack run
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
    """Rows for every model with a summary record, in the order of those records."""
    rows = []
    for summary in (r for r in records if r["protocol"] == "summary"):
        name = summary["target"]
        mine = [r for r in records if r.get("target") == name]

        def worst(protocol: str, metric: str, mine: list[Record] = mine) -> Record | None:
            found = [r[metric] for r in mine if r["protocol"] == protocol and r[metric]["n"]]
            return min(found, key=lambda rate: rate["rate"]) if found else None

        checked = [r for r in mine if r["protocol"] in ("adaptive", "strong", "whitebox")]
        flags = sorted({f for r in checked for f in r.get("flags", [])})
        strong = [r["accuracy"] for r in mine if r["protocol"] == "strong" and r["headline"]]
        decision = [r["score"]["score"] for r in mine if r["protocol"] == "decision"]
        verdicts = [r for r in mine if r["protocol"] == "verdict"]
        verdict = min(verdicts, key=lambda r: r["robust"]["rate"]) if verdicts else None
        noise = [
            r["curves"][name]["32.0"]
            for r in records
            if r["protocol"] == "noise" and "32.0" in r["curves"].get(name, {})
        ]
        rows.append(
            ComparisonRow(
                model=name,
                defense=summary.get("defense", "—"),
                clean=summary["clean_accuracy"],
                transfer=worst("transfer", "defense_rate"),
                whitebox=worst("whitebox", "accuracy"),
                adaptive=worst("adaptive", "accuracy"),
                strong=min(strong, key=lambda rate: rate["rate"]) if strong else None,
                universal=worst("universal", "restoration"),
                decision=decision[0] if decision else None,
                noise32=noise[0] if noise else None,
                ms_per_image=summary["ms_per_image"],
                cost_ratio=summary["cost_ratio"],
                passes=summary["passes_per_image"],
                passes_ratio=summary["passes_ratio"],
                added_parameters=summary["added_parameters"],
                flags=tuple(flags),
                verdict=verdict["robust"] if verdict else None,
                status=_status_text(verdict),
            )
        )
    return rows


def _status_text(verdict: Record | None) -> str:
    if verdict is None:
        return "—"
    deciding = verdict.get("deciding") or ""
    return f"{verdict['status']} ({deciding})" if deciding else str(verdict["status"])


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

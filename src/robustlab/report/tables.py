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
                    r.get("source", ""),
                    r.get("target", ""),
                    r.get("attack", ""),
                    metric,
                    rate["hits"],
                    rate["n"],
                    rate["rate"],
                    rate["low"],
                    rate["high"],
                ]
            )
    with atomic_write(path, "w") as handle:
        handle.write(buffer.getvalue())


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
    transfer_rows = [r for r in records if r["protocol"] in ("transfer", "ensemble_transfer")]
    if transfer_rows:
        lines += [
            "## Transfer: success defense rate (filtered, appendix A.7) and unfiltered accuracy",
            "",
            "| source | target | attack | defense rate | accuracy | clean accuracy |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['source']} | {r['target']} | {r['attack']} | {_rate_text(r['defense_rate'])} | "
            f"{_rate_text(r['accuracy'])} | {_rate_text(r['clean_accuracy'])} |"
            for r in transfer_rows
        ]
        lines.append("")
    white = [r for r in records if r["protocol"] == "whitebox"]
    if white:
        lines += ["## White-box accuracy", "", "| model | attack | accuracy | flags |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['target']} | {r['attack']} | {_rate_text(r['accuracy'])} | "
                  f"{', '.join(r.get('flags', [])) or '—'} |" for r in white]  # fmt: skip
        lines.append("")
    lines += strong_markdown([r for r in records if r["protocol"] == "strong"])
    adaptive = [r for r in records if r["protocol"] == "adaptive"]
    if adaptive:
        lines += [
            "## Adaptive white-box: the attack through the whole defended model",
            "",
            "| model | attack | surface | accuracy | clean | transfer from base | ±ε noise "
            "| zero-grad share | loss clean → adv | flags |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in adaptive:
            surface = r["surface"] + (f" ({r['bpda_part']})" if r["bpda_part"] else "")
            moved = _rate_text(r["transfer_accuracy"]) if r["transfer_accuracy"] else "—"
            lines.append(
                f"| {r['target']} | {r['attack']} | {surface} | {_rate_text(r['accuracy'])} | "
                f"{_rate_text(r['clean_accuracy'])} | {moved} | {_rate_text(r['noise_accuracy'])} "
                f"| {r['zero_gradient_share']:.2f} | {r['loss_clean']:.2f} → "
                f"{r['loss_adversarial']:.2f} | {', '.join(r['flags']) or '—'} |"
            )
        lines.append("")
    universal = [r for r in records if r["protocol"] == "universal"]
    if universal:
        lines += [
            "## Universal perturbations: fooling rate and restoration accuracy",
            "",
            "| model | attack | ξ | computed against | fooling rate | perturbed accuracy "
            "| restoration |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['target']} | {r['attack']} | {r['xi']:g} | {r['against']} | "
            f"{_rate_text(r['fooling_rate'])} | {_rate_text(r['perturbed_accuracy'])} | "
            f"{_rate_text(r['restoration'])} |"
            for r in universal
        ]
        lines.append("")
    decision = [r for r in records if r["protocol"] == "decision"]
    if decision:
        lines += [
            "## Decision-based (Boundary): S(M) = median ‖δ‖²/N",
            "",
            "| model | S(M) | n | failed | median queries |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['target']} | {r['score']['score']:.2e} | {r['score']['n']} | "
            f"{r['score']['failed']} | {r['score']['median_queries']} |"
            for r in decision
        ]
        lines.append("")
    for kind, title, unit in (
        ("curve", "Robust accuracy against ε (APGD-CE; smallest ε per image by bisection)", "ε"),
        ("noise", "Additive Gaussian noise: accuracy on images every model gets right", "σ"),
        ("shuffle", "Patch shuffle: accuracy on images every model gets right", "k"),
    ):
        for r in (r for r in records if r["protocol"] == kind):
            levels = curve_levels(r)
            lines += [
                f"## {title}",
                "",
                "| model | " + " | ".join(f"{unit}={lv}" for lv in levels) + " |",
                "|---|" + "---|" * len(levels),
            ]
            lines += [
                f"| {m} | " + " | ".join(_rate_text(row[lv]) for lv in levels) + " |"
                for m, row in r["curves"].items()
            ]
            lines.append("")
    return "\n".join(lines)


def strong_markdown(strong: list[Record]) -> list[str]:
    """The strong protocol: robust accuracy after each attack of the sequence."""
    if not strong:
        return []
    steps = list(strong[0]["after"])
    lines = [
        "## Strong (AutoAttack-style): robust accuracy after each attack, worst case per image",
        "",
        "| model | ε | clean | " + " | ".join(f"after {s}" for s in steps)
        + " | broken by each | zero-grad share | flags |",
        "|---|---|---|" + "---|" * len(steps) + "---|---|---|",
    ]  # fmt: skip
    for r in strong:
        after = [_rate_text(r["after"][s]) if s in r["after"] else "—" for s in steps]
        broken = ", ".join(f"{k} {v}" for k, v in r["broken"].items())
        lines.append(
            f"| {r['target']} | {r['eps']:g} | {_rate_text(r['clean_accuracy'])} | "
            + " | ".join(after)
            + f" | {broken} | {r['zero_gradient_share']:.2f} | {', '.join(r['flags']) or '—'} |"
        )
    return [*lines, ""]


# --- the comparison table: one row per model, one column per protocol ---------------------


@dataclass(frozen=True)
class ComparisonRow:
    """One model's worst case under each protocol (rates as record dicts, None if not run)."""

    model: str
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
    added_parameters: int | None = None
    flags: tuple[str, ...] = ()


COMPARISON_HEADERS = (
    "model", "clean", "transfer (worst)", "white-box", "adaptive", "strong",
    "universal restoration", "decision S(M)", "noise σ=32", "ms/image (×base)", "added params",
    "flags",
)  # fmt: skip


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
        noise = [
            r["curves"][name]["32.0"]
            for r in records
            if r["protocol"] == "noise" and "32.0" in r["curves"].get(name, {})
        ]
        rows.append(
            ComparisonRow(
                model=name,
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
                added_parameters=summary["added_parameters"],
                flags=tuple(flags),
            )
        )
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
        cells = [row.model] + [
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
        cells.append(_cost_text(row))
        cells.append(str(row.added_parameters) if row.added_parameters is not None else "—")
        cells.append(", ".join(row.flags) or "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Universal restoration: (clean + perturbed top-1) / (2 × the base model's clean "
        "top-1), interval from the pooled hits. Strong: APGD-CE, APGD-T and Square, worst case "
        "per image, at the protocol's first ε. Flags come from the white-box, adaptive and "
        "strong cells.",
        "",
    ]
    return lines


def _cost_text(row: ComparisonRow) -> str:
    if row.ms_per_image is None:
        return "—"
    ratio = f" (×{row.cost_ratio:.1f})" if row.cost_ratio is not None else ""
    return f"{row.ms_per_image:.2f}{ratio}"

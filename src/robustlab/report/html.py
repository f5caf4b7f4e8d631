"""One self-contained HTML page for a results directory: styles and images inline, no scripts.

Every rate links to the spec entry of the protocol that produced it (and carries the
command as its tooltip); model and attack names link to their spec entries.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

from robustlab.evaluation.protocols.base import Record
from robustlab.evaluation.stats import IntervalRecord
from robustlab.io import JSONObject
from robustlab.report.results import Results

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ci{color:#777;font-size:.85em}code,pre{background:#f6f6f6;padding:.1em .3em}
pre{padding:.6em;overflow-x:auto}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.spec div:target{background:#fff6c9}a{color:#0645ad;text-decoration:none}
"""


def esc(value: Any) -> str:
    return html.escape(str(value))


def image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def rate_cell(rate: IntervalRecord, protocol_index: int | None, command: str) -> str:
    """A rate with its interval, linked to its protocol's spec entry, the command as tooltip."""
    if not rate["n"]:
        return '<td class="num">n/a <span class="ci">(n=0)</span></td>'
    text = (
        f'{100 * rate["rate"]:.1f}% <span class="ci">[{100 * rate["low"]:.1f}, '
        f"{100 * rate['high']:.1f}] n={rate['n']}</span>"
    )
    anchor = f"#spec-protocols-{protocol_index}" if protocol_index is not None else "#spec"
    return f'<td class="num"><a href="{anchor}" title="{esc(command)}">{text}</a></td>'


def name_link(kind: str, name: str) -> str:
    """Link each model of a ``+``-joined name to its spec entry."""
    parts = [f'<a href="#spec-{kind}-{esc(n)}">{esc(n)}</a>' for n in str(name).split("+")]
    return " + ".join(parts)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def spec_section(spec: JSONObject) -> str:
    """The spec, one anchored block per model, attack and protocol."""
    blocks = []
    defaults = {**spec.get("experiment", {}), **spec.get("train", {})}
    blocks.append(
        f'<div id="spec-defaults"><pre>{esc(_toml_like("defaults", defaults))}</pre></div>'
    )
    for kind in ("models", "attacks"):
        for name, entry in spec.get(kind, {}).items():
            blocks.append(
                f'<div id="spec-{kind}-{esc(name)}"><pre>'
                f"{esc(_toml_like(f'{kind}.{name}', entry or {}))}</pre></div>"
            )
    for index, entry in enumerate(spec.get("protocols", [])):
        blocks.append(
            f'<div id="spec-protocols-{index}"><pre>'
            f"{esc(_toml_like(f'protocols #{index + 1}', entry))}</pre></div>"
        )
    return '<div class="spec" id="spec">' + "".join(blocks) + "</div>"


def _toml_like(title: str, entry: JSONObject) -> str:
    lines = [f"[{title}]"] + [f"{k} = {v!r}" for k, v in entry.items()]
    return "\n".join(lines)


def transfer_tables(records: Sequence[Record], results: Results, command: str) -> str:
    parts = []
    kinds = ("transfer", "ensemble_transfer")
    for index in dict.fromkeys(r.get("protocol_index") for r in records if r["protocol"] in kinds):
        rows = [r for r in records if r.get("protocol_index") == index and r["protocol"] in kinds]
        title = results.protocol_title(index, rows[0]["protocol"])
        body = [
            [
                f"<td>{name_link('models', r['source'])}</td>",
                f"<td>{name_link('models', r['target'])}</td>",
                f"<td>{name_link('attacks', r['attack'])}</td>",
                rate_cell(r["defense_rate"], index, command),
                rate_cell(r["accuracy"], index, command),
                rate_cell(r["clean_accuracy"], index, command),
            ]
            for r in rows
        ]
        headers = [
            "source",
            "target",
            "attack",
            "success defense rate",
            "accuracy (unfiltered)",
            "clean accuracy",
        ]
        parts.append(f"<h3>{esc(title)}</h3>" + table(headers, body))
    return "".join(parts)


# marks a page robustlab wrote: `robustlab report --out` replaces such a file, no other
GENERATOR = '<meta name="generator" content="robustlab report">'


def page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """The whole document: a heading, a contents list and the sections."""
    contents = "".join(f'<li><a href="#{esc(anchor(s))}">{esc(s)}</a></li>' for s, _ in sections)
    body = "".join(f'<h2 id="{esc(anchor(s))}">{esc(s)}</h2>{content}' for s, content in sections)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{GENERATOR}'
        f"<title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1><ul>{contents}</ul>{body}"
        "</body></html>"
    )


def anchor(section: str) -> str:
    return "s-" + "".join(c if c.isalnum() else "-" for c in section.lower())

"""``robustlab report RESULTS_DIR``: results.json, the runs and the adversarial sets -> one page.

The page is written atomically; its figures are also written as PNG files in a folder
next to it (``<name>_figures/``), for papers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from robustlab.attacks import AdversarialSet, load_set
from robustlab.data import load_dataset
from robustlab.evaluation.protocols.base import Record
from robustlab.evaluation.protocols.tables import curve_levels
from robustlab.evaluation.stats import IntervalRecord
from robustlab.io import (
    RobustlabError,
    atomic_write,
    check_name,
    check_writable,
    is_within,
    under,
)
from robustlab.report import figures
from robustlab.report.galleries import defense_galleries, prediction_pairs
from robustlab.report.html import (
    GENERATOR,
    esc,
    image,
    name_link,
    page,
    rate_cell,
    spec_section,
    table,
    transfer_tables,
)
from robustlab.report.results import ModelInfo, Results, read_results
from robustlab.report.tables import (
    COMPARISON_HEADERS,
    ComparisonRow,
    comparison_rows,
    cost_text,
)
from robustlab.runs import load, read_meta


def write_report(
    results_dir: str | Path,
    out: str | Path | None = None,
    gallery_size: int = 6,
    *,
    force: bool = False,
) -> Path:
    """Build the report of ``results_dir``; return the path of the HTML file.

    ``out`` (default ``RESULTS/report.html``) may replace a report robustlab wrote; any other
    existing file only with ``force``, and never one of the report's inputs (a file of the
    results directory that is not an HTML page)."""
    results_dir = Path(results_dir)
    out = _report_path(results_dir, out, force)
    results = read_results(results_dir)
    pictures: dict[str, bytes] = {}
    sections = _sections(results, results_dir, pictures, gallery_size)
    with atomic_write(out, "w") as handle:
        handle.write(page(f"robustlab report: {results.name}", sections))
    figure_dir = out.parent / f"{out.stem}_figures"
    for name, png in pictures.items():
        with atomic_write(figure_dir / f"{name}.png") as handle:
            handle.write(png)
    return out


def _report_path(results_dir: Path, out: str | Path | None, force: bool) -> Path:
    """Where the page goes, checked before any work (see :func:`write_report`)."""
    if out is None:
        return results_dir / "report.html"
    out = Path(out)
    if is_within(out, results_dir) and (out.suffix != ".html" or out.is_dir()):
        raise RobustlabError(
            f"{out}: the report would overwrite a file of its input "
            f"{results_dir}; choose an .html path"
        )
    if out.exists() and not force and not _is_report(out):
        raise RobustlabError(
            f"{out} exists and is not a robustlab report; pass --force to "
            "replace it, or choose another --out"
        )
    check_writable(out.parent)
    return out


def _is_report(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return GENERATOR.encode() in handle.read(4096)
    except OSError:
        return False


def _sections(
    results: Results, results_dir: Path, pictures: dict[str, bytes], gallery_size: int
) -> list[tuple[str, str]]:
    records, command = results.records, results.command
    sections = []
    rows = comparison_rows(records)
    if rows:
        sections.append(("Comparison of defenses", _comparison_section(rows, command)))
    sections.append(("Run", _run_section(results)))
    if any(r["protocol"] in ("transfer", "ensemble_transfer") for r in records):
        sections.append(("Transfer attacks", transfer_tables(records, results, command)))
        maps = ""
        for attack in dict.fromkeys(r["attack"] for r in records if r["protocol"] == "transfer"):
            pictures[f"transfer_{attack}"] = figures.transfer_heatmap(records, attack)
            maps += image(pictures[f"transfer_{attack}"], f"transfer matrix, {attack}")
        sections.append(("Transfer matrices", maps))
        trade = _tradeoff(records, results.models)
        if trade is not None:
            pictures["keep_probability_tradeoff"] = trade
            sections.append(
                ("Keep-probability trade-off", image(trade, "clean accuracy vs defense rate"))
            )
    for kind, title, unit in (
        ("curve", "Robust accuracy against ε", "ε (0-255), ℓ∞"),
        ("noise", "Additive Gaussian noise", "σ (0-255)"),
        ("shuffle", "Patch-shuffle shape probe", "k (k×k patches)"),
    ):
        for i, r in enumerate(r for r in records if r["protocol"] == kind):
            pictures[f"{kind}_{i}"] = figures.accuracy_curves(r, unit, title)
            sections.append(
                (
                    f"{title}" + (f" ({i + 1})" if i else ""),
                    _curve_section(r, unit, command, pictures[f"{kind}_{i}"]),
                )
            )
    sections += _simple_tables(records, command)
    gallery = _gallery(results_dir, records, results.models, gallery_size, _loader(results))
    if gallery is not None:
        pictures["gallery"] = gallery
        sections.append(("Gallery: clean vs adversarial", image(gallery, "adversarial examples")))
    for i, (title, png) in enumerate(defense_galleries(results_dir, results, _loader(results))):
        pictures[f"defense_gallery_{i}"] = png
        sections.append((f"Gallery: {title}", image(png, title)))
    sections.append(("Spec", spec_section(results.spec)))
    return sections


def _comparison_section(rows: list[ComparisonRow], command: str) -> str:
    """The table the report opens with: every model's worst case under each protocol."""

    def cell(rate: IntervalRecord | None) -> str:
        return rate_cell(rate, None, command) if rate is not None else "<td>—</td>"

    body = []
    for row in rows:
        cost = cost_text(row)
        rates = (row.clean, row.transfer, row.whitebox, row.adaptive, row.strong, row.universal)
        decision = "—" if row.decision is None else f"{row.decision:.2e}"
        cells = [
            f"<td>{name_link('models', row.model)}</td>",
            f"<td>{esc(row.defense)}</td>",
            *(cell(r) for r in rates),
        ]
        cells += [f'<td class="num">{decision}</td>', cell(row.noise32)]
        cells += [f'<td class="num">{cost}</td>', f'<td class="num">{row.added_parameters}</td>']
        cells.append(f"<td>{esc(', '.join(row.flags) or '—')}</td>")
        cells += [cell(row.verdict), f"<td>{esc(row.status)}</td>"]
        body.append(cells)
    return (
        "<p>Rows: models (defended or not); columns: the worst case over each protocol's "
        "attacks, sources and strengths, with Wilson 95% intervals. <em>white-box</em> uses "
        "plain gradients; <em>adaptive</em> goes through the whole defended model with BPDA "
        "or EOT where the defense declares them; <em>strong</em> runs APGD-CE, APGD-T and "
        "Square through the same view and counts an image robust only if no attack broke it. "
        "Flags mark signs of gradient masking. Universal restoration: (clean + perturbed "
        "top-1) / (2 × base clean top-1). <em>verdict</em>: the worst case per image over "
        "every attack of the verdict protocol, its escalation included (an upper bound), with "
        "its status: reliable, resolved (checks passed after escalation) or unreliable (the "
        "deciding check named)."
        "</p>" + table(COMPARISON_HEADERS, body)
    )


def _run_section(results: Results) -> str:
    env = results.environment
    rows = [[f"<td>{esc(k)}</td>", f"<td>{esc(v)}</td>"] for k, v in env.items()]
    return (
        f"<p>Produced by <code>{esc(results.command)}</code>"
        f' (spec: <a href="#spec">{esc(results.spec_path or "below")}</a>). Rates are shown '
        "with Wilson 95% intervals and the number of images they rest on.</p>"
        + table(["environment", ""], rows)
    )


def _curve_section(record: Record, unit: str, command: str, png: bytes) -> str:
    levels = curve_levels(record)
    rows = [
        [f"<td>{name_link('models', model)}</td>"]
        + [rate_cell(row[level], record.get("protocol_index"), command) for level in levels]
        for model, row in record["curves"].items()
    ]
    return table(["model", *[f"{unit.split()[0]}={level}" for level in levels]], rows) + image(
        png, unit
    )


def _simple_tables(records: list[Record], command: str) -> list[tuple[str, str]]:
    sections = []
    white = [r for r in records if r["protocol"] == "whitebox"]
    if white:
        rows = [
            [
                f"<td>{name_link('models', r['target'])}</td>",
                f"<td>{name_link('attacks', r['attack'])}</td>",
                rate_cell(r["accuracy"], r.get("protocol_index"), command),
                f"<td>{esc(', '.join(r.get('flags', [])) or '—')}</td>",
            ]
            for r in white
        ]
        headers = ["model", "attack", "accuracy", "flags"]
        sections.append(("White-box accuracy", table(headers, rows)))
    sections += _adaptive_section(records, command) + _strong_section(records, command)
    sections += _universal_section(records, command)
    decision = [r for r in records if r["protocol"] == "decision"]
    if decision:
        rows = [
            [
                f"<td>{name_link('models', r['target'])}</td>",
                f'<td class="num"><a href="#spec-protocols-{r.get("protocol_index")}" '
                f'title="{esc(command)}">{r["score"]["score"]:.2e}</a></td>',
                f'<td class="num">{r["score"]["n"]}</td>',
                f'<td class="num">{r["score"]["failed"]}</td>',
                f'<td class="num">{r["score"]["median_queries"]}</td>',
            ]
            for r in decision
        ]
        headers = ["model", "S(M) = median ‖δ‖²/N", "n", "failed", "median queries"]
        sections.append(("Decision-based attack (Boundary)", table(headers, rows)))
    return sections


def _adaptive_section(records: list[Record], command: str) -> list[tuple[str, str]]:
    adaptive = [r for r in records if r["protocol"] == "adaptive"]
    if not adaptive:
        return []

    def row(r: Record) -> list[str]:
        index = r.get("protocol_index")
        part = f" ({r['bpda_part']})" if r["bpda_part"] else ""
        moved = r["transfer_accuracy"]
        return [
            f"<td>{name_link('models', r['target'])}</td>",
            f"<td>{name_link('attacks', r['attack'])}</td>",
            f"<td>{esc(r['surface'] + part)}</td>",
            rate_cell(r["accuracy"], index, command),
            rate_cell(moved, index, command) if moved else "<td>—</td>",
            rate_cell(r["noise_accuracy"], index, command),
            f'<td class="num">{r["zero_gradient_share"]:.2f}</td>',
            f'<td class="num">{r["loss_clean"]:.2f} → {r["loss_adversarial"]:.2f}</td>',
            f"<td>{esc(', '.join(r['flags']) or '—')}</td>",
        ]

    headers = [
        "model",
        "attack",
        "surface",
        "accuracy",
        "transfer from base",
        "±ε noise",
        "zero-gradient share",
        "loss clean → adversarial",
        "flags",
    ]
    return [("Adaptive white-box attacks", table(headers, [row(r) for r in adaptive]))]


def _strong_section(records: list[Record], command: str) -> list[tuple[str, str]]:
    strong = [r for r in records if r["protocol"] == "strong"]
    if not strong:
        return []
    steps = list(strong[0]["after"])

    def row(r: Record) -> list[str]:
        index = r.get("protocol_index")
        broken = ", ".join(f"{k} {v}" for k, v in r["broken"].items())
        return [
            f"<td>{name_link('models', r['target'])}</td>",
            f'<td class="num">{r["eps"]:g}</td>',
            rate_cell(r["clean_accuracy"], index, command),
            *(
                rate_cell(r["after"][s], index, command) if s in r["after"] else "<td>—</td>"
                for s in steps
            ),
            f"<td>{esc(broken)}</td>",
            f'<td class="num">{r["zero_gradient_share"]:.2f}</td>',
            f"<td>{esc(', '.join(r['flags']) or '—')}</td>",
        ]

    headers = [
        "model",
        "ε (0-255)",
        "clean",
        *(f"after {s}" for s in steps),
        "broken by each",
        "zero-gradient share",
        "flags",
    ]
    title = "Strong evaluation (AutoAttack-style worst case per image)"
    return [(title, table(headers, [row(r) for r in strong]))]


def _universal_section(records: list[Record], command: str) -> list[tuple[str, str]]:
    universal = [r for r in records if r["protocol"] == "universal"]
    if not universal:
        return []
    rows = [
        [
            f"<td>{name_link('models', r['target'])}</td>",
            f"<td>{esc(r['attack'])}</td>",
            f'<td class="num">{r["xi"]:g}</td>',
            f"<td>{esc(r['against'])}</td>",
        ]
        + [
            rate_cell(r[k], r.get("protocol_index"), command)
            for k in ("fooling_rate", "perturbed_accuracy", "restoration")
        ]
        for r in universal
    ]
    headers = [
        "model",
        "attack",
        "ξ (0-255)",
        "computed against",
        "fooling rate",
        "perturbed accuracy",
        "restoration accuracy",
    ]
    return [("Universal perturbations", table(headers, rows))]


def _tradeoff(records: list[Record], models: dict[str, ModelInfo]) -> bytes | None:
    """Clean accuracy vs defense rate of plain and defective models (one source, attack)."""
    cells = [r for r in records if r["protocol"] == "transfer"]
    if not cells:
        return None
    source, attack = cells[0]["source"], cells[0]["attack"]
    points = []
    for r in cells:
        if r["source"] != source or r["attack"] != attack or not r["defense_rate"]["n"]:
            continue
        info = models.get(r["target"])
        if info is None or r["target"] == source:
            continue  # an older results.json, or the source attacking itself (white-box)
        defect = info.defect
        if defect is None and not info.plain:
            continue  # a baseline, not part of the keep-probability curve
        blocks = str(defect).split(":")[0] if defect is not None else ""
        label = f"p={defect.keep_prob:g} {blocks}" if defect else f"{r['target']} (p=1)"
        points.append((label, r["clean_accuracy"]["rate"], r["defense_rate"]["rate"]))
    return figures.tradeoff(points, attack) if len(points) >= 2 else None


def _gallery(
    results_dir: Path,
    records: list[Record],
    models: dict[str, ModelInfo],
    size: int,
    load: Callable[[Path, str], nn.Module | None],
) -> bytes | None:
    """Examples that fooled the source, as two targets (standard, defective) see them."""
    adv_set = _pick_set(results_dir)
    loaded = {
        t: m for t in _gallery_targets(records, models) if (m := load(results_dir, t)) is not None
    }
    if adv_set is None or not loaded:
        return None
    fooled = np.flatnonzero(adv_set.fooled_source)[:size]
    if not len(fooled):
        return None
    meta = read_meta(_source_run(results_dir, adv_set))
    classes = meta["dataset"]["classes"]
    # the set records the folder its images came from (older sets: the source run does)
    data_dir = adv_set.config.get("data_dir") or meta["dataset"].get("data_dir")
    data = load_dataset(adv_set.config["dataset"], adv_set.config["split"], data_dir)
    clean = data.images[adv_set.indices[fooled]]
    adversarial = np.round(adv_set.pixels()[fooled].numpy() * 255).astype(np.uint8)
    predictions: dict[str, Sequence[tuple[str, str]]] = {
        name: prediction_pairs(model, clean, adversarial, classes) for name, model in loaded.items()
    }
    labels = [classes[int(y)] for y in adv_set.labels[fooled]]
    return figures.gallery(clean, adversarial, labels, predictions)


def _pick_set(results_dir: Path) -> AdversarialSet | None:
    """The first single-source PGD set of the results directory, else any single-source set."""
    sets = [load_set(p) for p in sorted((results_dir / "advs").glob("*.npz"))]
    sets = [s for s in sets if len(s.config.get("sources", [])) == 1]
    sets.sort(key=lambda s: s.config["attack"] != "pgd")
    return sets[0] if sets else None


def _source_run(results_dir: Path, adv_set: AdversarialSet) -> Path:
    """The set's source run, looked up in this results directory by folder name (a path
    recorded in a file is data: the report reads nothing outside the folder it shows)."""
    return under(results_dir, "runs", Path(str(adv_set.config["sources"][0])).name)


def _gallery_targets(records: list[Record], models: dict[str, ModelInfo]) -> list[str]:
    preferred: list[str] = [t for t in ("standard", "defective") if t in models]
    if len(preferred) == 2:
        return preferred
    return list(dict.fromkeys(r["target"] for r in records if r["protocol"] == "transfer"))[:2]


def _loader(results: Results) -> Callable[[Path, str], nn.Module | None]:
    """Models by name from the run folders results.json records (older results: none)."""

    def load_named(results_dir: Path, name: str) -> nn.Module | None:
        check_name(name, f"{results_dir}/results.json model")
        info = results.models.get(name)
        runs = info.runs if info is not None else ()
        if len(runs) != 1:
            return None  # an ensemble, a defended model, or an older results.json
        run = under(results_dir, "runs", Path(str(runs[0])).name)
        return load(run) if (run / "meta.json").is_file() else None

    return load_named

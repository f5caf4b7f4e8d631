"""Figures of a results directory, drawn with matplotlib (Agg) and returned as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from robustlab.evaluation.protocols.base import Record


def to_png(fig: Figure) -> bytes:
    """Render and close a figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def is_blank(png: bytes) -> bool:
    """True when an image has (almost) no variation: a figure that drew nothing."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    return float(pixels.std()) < 1.0


def transfer_heatmap(records: Sequence[Record], attack: str) -> bytes:
    """Sources × targets matrix of success defense rates for one attack, with the values."""
    cells = [r for r in records if r["protocol"] == "transfer" and r["attack"] == attack]
    sources = list(dict.fromkeys(r["source"] for r in cells))
    targets = list(dict.fromkeys(r["target"] for r in cells))
    matrix = np.full((len(sources), len(targets)), np.nan)
    for r in cells:
        if r["defense_rate"]["n"]:
            matrix[sources.index(r["source"]), targets.index(r["target"])] = (
                100 * r["defense_rate"]["rate"]
            )
    fig, ax = plt.subplots(figsize=(1.1 * len(targets) + 2.5, 0.6 * len(sources) + 1.8))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(targets)), targets, rotation=35, ha="right")
    ax.set_yticks(range(len(sources)), sources)
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            ax.text(
                j,
                i,
                f"{value:.0f}",
                ha="center",
                va="center",
                color="white" if value < 60 else "black",
            )
    fig.colorbar(image, ax=ax, label="success defense rate (%)")
    ax.set_title(f"Transfer, {attack}: target accuracy on adversarials that fooled the source")
    return to_png(fig)


def accuracy_curves(record: Record, unit: str, title: str) -> bytes:
    """Accuracy per level (σ or k) for each model, with Wilson 95 % intervals as error bars."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for model, row in record["curves"].items():
        ordered = sorted(row.items(), key=lambda item: float(item[0]))
        levels = [float(level) for level, _ in ordered]
        rates = [100 * r["rate"] for _, r in ordered]
        low = [max(0.0, 100 * (r["rate"] - r["low"])) for _, r in ordered]  # records written
        high = [max(0.0, 100 * (r["high"] - r["rate"])) for _, r in ordered]  # before the fix
        ax.errorbar(levels, rates, yerr=[low, high], marker="o", capsize=3, label=model)
    ax.set_xlabel(unit)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return to_png(fig)


def tradeoff(points: Sequence[tuple[str, float, float]], attack: str) -> bytes:
    """Clean accuracy against success defense rate, one labelled point per model (paper Fig. 5)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, clean, defense in points:
        ax.scatter(100 * clean, 100 * defense, s=36)
        ax.annotate(
            label,
            (100 * clean, 100 * defense),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"success defense rate, {attack} (%)")
    ax.grid(alpha=0.3)
    ax.set_title("Keep probability trade-off")
    return to_png(fig)


def gallery(
    clean: np.ndarray,
    adversarial: np.ndarray,
    labels: Sequence[str],
    predictions: Mapping[str, Sequence[tuple[str, str]]],
    magnify: float = 10.0,
    titles: tuple[str, str, str] = ("clean", "adversarial", "perturbation"),
) -> bytes:
    """Rows of clean | adversarial | perturbation ×``magnify``, titled with each model's
    predictions on the clean and the adversarial image (paper Figs. 3 and 6); ``titles``
    name the three columns for other pairs (an image and its purified version)."""
    rows = len(clean)
    fig, axes = plt.subplots(rows, 3, figsize=(7.2, 2.3 * rows), squeeze=False)
    for i in range(rows):
        delta = adversarial[i].astype(np.float32) - clean[i].astype(np.float32)
        shown = [clean[i], adversarial[i], np.clip(0.5 + magnify * delta / 255, 0, 1)]
        names = [f"{titles[0]}: {labels[i]}", titles[1], f"{titles[2]} ×{magnify:g}"]
        for j, (image, name) in enumerate(zip(shown, names, strict=True)):
            ax = axes[i, j]
            picture = image.transpose(1, 2, 0) if image.ndim == 3 else image
            if picture.shape[-1] == 1:
                picture = picture[..., 0]
            if picture.dtype != np.float32:
                picture = picture / 255
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=8)
        text = "\n".join(
            f"{model}: {pred[i][0]} → {pred[i][1]}" for model, pred in predictions.items()
        )
        axes[i, 1].set_xlabel(text, fontsize=7)
    fig.tight_layout()
    return to_png(fig)

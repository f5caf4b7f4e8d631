"""Galleries of the defenses: what an input transformation does to images (CSC purification,
JPEG, …), and how feature regeneration answers a universal perturbation.

They rebuild the defended models from the results directory (the spec recorded in
results.json, the runs and the prepared defense folders); a gallery whose inputs are
missing is left out, never an error of the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustlab.attacks.universal import UniversalPerturbation, apply
from robustlab.data import load_dataset, sample_indices
from robustlab.defenses.base import Defended
from robustlab.experiments.spec import ModelEntry, parse_spec
from robustlab.io import RobustlabError
from robustlab.models.base import predict
from robustlab.report import figures

Loader = Callable[[Path, str], nn.Module | None]


def defense_galleries(
    results_dir: Path, results: dict[str, Any], load: Loader, size: int = 4
) -> list[tuple[str, bytes]]:
    """(title, PNG) for each input-transformation and regeneration defense of the run."""
    try:
        spec = parse_spec(results["spec"])
        data = load_dataset(spec.dataset, "test", spec.data_dir)
    except (RobustlabError, ValueError, KeyError):
        return []
    pick = sample_indices(len(data), spec.n, spec.seed)[:size]
    clean = data.images[pick]
    labels = [data.classes[int(y)] for y in data.labels[pick]]
    galleries = []
    for name, entry in spec.models.items():
        if entry.defense is None or entry.base is None:
            continue
        base = load(results_dir, entry.base)
        model = _defended(results_dir, name, entry, base)
        if model is None:
            continue
        if entry.defense.kind == "input":
            with torch.no_grad():
                shown = model.transform(torch.from_numpy(clean).float() / 255)
            changed = np.round(shown.numpy() * 255).astype(np.uint8)
            pairs = {name: prediction_pairs(model, clean, changed, data.classes)}
            png = figures.gallery(
                clean, changed, labels, pairs, titles=("input", f"{name} output", "change")
            )
            galleries.append((f"{name}: what the purifier does", png))
        elif base is not None:  # regeneration (always true here: _defended needed base)
            delta = _perturbation_against(results_dir, entry.base)
            if delta is None:
                continue
            pixels = torch.from_numpy(clean).float() / 255
            perturbed = np.round(apply(pixels, delta).numpy() * 255).astype(np.uint8)
            predictions: dict[str, Sequence[tuple[str, str]]] = {
                m: prediction_pairs(net, clean, perturbed, data.classes)
                for m, net in ((entry.base, base), (name, model))
            }
            png = figures.gallery(
                clean,
                perturbed,
                labels,
                predictions,
                titles=("clean", "universal perturbation added", "δ"),
            )
            galleries.append((f"{name}: a universal perturbation of {entry.base}", png))
    return galleries


def _defended(
    results_dir: Path, name: str, entry: ModelEntry, base: nn.Module | None
) -> Defended | None:
    """The newest prepared defense of ``name`` around ``base``."""
    folders = sorted((results_dir / "defenses").glob(f"{name}-*"), key=lambda p: p.stat().st_mtime)
    if entry.defense is None or not folders or base is None:
        return None
    if not entry.defense.is_prepared(folders[-1]):
        return None
    return entry.defense.wrap(base, folders[-1])


def _perturbation_against(results_dir: Path, victim: str) -> torch.Tensor | None:
    """The first universal perturbation of the run computed against ``victim``."""
    for path in sorted((results_dir / "universal").glob("*.safetensors")):
        found = UniversalPerturbation.load(path)
        if found.config.get("victim") == victim:
            return found.delta
    return None


def prediction_pairs(
    model: nn.Module, before: np.ndarray, after: np.ndarray, classes: Sequence[str]
) -> list[tuple[str, str]]:
    """(prediction on ``before``, prediction on ``after``) class names for each uint8 image."""
    first = predict(model, torch.from_numpy(before).float() / 255)
    second = predict(model, torch.from_numpy(after).float() / 255)
    return [(classes[int(a)], classes[int(b)]) for a, b in zip(first, second, strict=True)]

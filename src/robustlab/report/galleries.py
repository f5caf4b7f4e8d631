"""Galleries of the defenses: what an input transformation does to images (CSC purification,
JPEG, …), and how feature regeneration answers a universal perturbation.

They rebuild the defended models from what results.json records of each model (its run
folders, its defense's config and folder); a gallery whose inputs are missing is left out,
never an error of the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustlab.attacks.universal import UniversalPerturbation, apply
from robustlab.data import load_dataset, sample_indices
from robustlab.defenses.base import Defended, Defense
from robustlab.defenses.registry import defense_from_table
from robustlab.io import RobustlabError, under
from robustlab.models.base import predict
from robustlab.report import figures
from robustlab.report.results import ModelInfo, Results
from robustlab.units import to_unit

Loader = Callable[[Path, str], nn.Module | None]


def defense_galleries(
    results_dir: Path, results: Results, load: Loader, size: int = 4
) -> list[tuple[str, bytes]]:
    """(title, PNG) for each input-transformation and regeneration defense of the run."""
    experiment = results.experiment
    if experiment is None:
        return []  # results.json of an older robustlab: no galleries
    try:
        data = load_dataset(experiment.dataset, "test", experiment.data_dir)
    except (RobustlabError, ValueError, KeyError):
        return []
    pick = sample_indices(len(data), experiment.n, experiment.seed)[:size]
    clean = data.images[pick]
    labels = [data.classes[int(y)] for y in data.labels[pick]]
    galleries = []
    for name, info in results.models.items():
        if info.defense_table is None or info.defense_config is None or info.base is None:
            continue
        base = load(results_dir, info.base)
        defense = defense_from_table(info.defense_table, to_unit(info.defense_config))
        model = _defended(results_dir, info, defense, base)
        if model is None or base is None:
            continue
        if defense.kind == "input":
            with torch.no_grad():
                shown = model.transform(torch.from_numpy(clean).float() / 255)
            changed = np.round(shown.numpy() * 255).astype(np.uint8)
            pairs = {name: prediction_pairs(model, clean, changed, data.classes)}
            png = figures.gallery(
                clean, changed, labels, pairs, titles=("input", f"{name} output", "change")
            )
            galleries.append((f"{name}: what the purifier does", png))
        else:
            delta = _perturbation_against(results_dir, info.base)
            if delta is None:
                continue
            pixels = torch.from_numpy(clean).float() / 255
            perturbed = np.round(apply(pixels, delta).numpy() * 255).astype(np.uint8)
            predictions: dict[str, Sequence[tuple[str, str]]] = {
                m: prediction_pairs(net, clean, perturbed, data.classes)
                for m, net in ((info.base, base), (name, model))
            }
            png = figures.gallery(
                clean,
                perturbed,
                labels,
                predictions,
                titles=("clean", "universal perturbation added", "δ"),
            )
            galleries.append((f"{name}: a universal perturbation of {info.base}", png))
    return galleries


def _defended(
    results_dir: Path, info: ModelInfo, defense: Defense, base: nn.Module | None
) -> Defended | None:
    """The prepared defense recorded in results.json (its folder), around ``base``."""
    folder = under(results_dir, "defenses", Path(str(info.folder)).name)
    if base is None or not defense.is_prepared(folder):
        return None
    return defense.wrap(base, folder)


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

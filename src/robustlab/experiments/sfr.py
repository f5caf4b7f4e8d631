"""Library functions behind ``robustlab sfr``: train FRUs on a run, evaluate them.

An SFR directory is a prepared :class:`~robustlab.defenses.regeneration.RegenerationDefense`
(``fru.safetensors``: the regeneration units and their selected channels; ``defense.json``;
``perturbations/``: every universal perturbation computed for it, reused) plus what makes it
self-contained: ``base.safetensors`` (the undefended model's weights) and ``meta.json``
(model config, layers, training settings and history).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict, cast

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.assemble import create
from robustlab.attacks.universal import UniversalPerturbation, apply
from robustlab.data import Dataset, load_dataset, sample
from robustlab.data.readers import decode_image
from robustlab.defenses.base import DONE_FILE, PrepareContext
from robustlab.defenses.regeneration import (
    RegenerationDefense,
    restoration_accuracy,
    universal_perturbation,
)
from robustlab.io import (
    RobustlabError,
    load_tensors,
    prepare_output,
    read_json,
    save_tensors,
    write_json,
    writes_output,
)
from robustlab.models.base import predict
from robustlab.models.config import ModelConfig, ModelRecord
from robustlab.models.meta import DatasetMeta
from robustlab.runs import load, model_config, placed, read_meta
from robustlab.seeding import derive_seed
from robustlab.version import __version__

SFR_FORMAT = "robustlab-sfr/1"


class SFRMeta(TypedDict):
    """An SFR directory's ``meta.json``: the base model and data, what the units were
    trained on, the command (:func:`load_sfr` checks what it reads)."""

    format: str
    version: str
    model: ModelRecord
    dataset: DatasetMeta
    base_run: str
    layers: list[str]
    fraction: float
    attack: str
    xi: float
    uaps: int
    epochs: int
    train_limit: int | None
    seed: int
    history: list[dict[str, float]]  # per epoch: loss and seconds
    command: str


class Scores(TypedDict):
    """One model under a universal perturbation (fractions of the test images)."""

    clean: float
    perturbed: float
    fooling_rate: float
    restoration: float


class SFREvaluation(TypedDict):
    """What :func:`evaluate_sfr` measured: the perturbation and both models' scores."""

    attack: str
    xi: float
    against: str
    n: int
    linf: float
    l2: float
    baseline: Scores
    defended: Scores


def _train_split(meta: SFRMeta, limit: int | None, seed: int) -> Dataset:
    info = meta["dataset"]
    return sample(load_dataset(info["name"], "train", info.get("data_dir")), limit, seed)


@writes_output("out", "robustlab sfr train")
def train_sfr(
    run: str | Path,
    out: str | Path,
    layers: list[str],
    *,
    attack: str = "uap",
    xi: float = 10 / 255,
    uaps: int = 3,
    attack_images: int = 256,
    train_limit: int | None = 5000,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 1e-3,
    fraction: float = 0.5,
    seed: int = 0,
    device: torch.device | str = "cpu",
    force: bool = False,
    quiet: bool = False,
    command: str = "",
) -> SFRMeta:
    """Train FRUs on ``layers`` of a run against ``attack`` perturbations; write ``out``.

    A front-end over :class:`~robustlab.defenses.regeneration.RegenerationDefense` (the
    spec's ``regenerate`` defense): its ``prepare`` computes the perturbations and trains the
    units into ``out``; this adds the base weights and a ``meta.json`` that make the
    directory self-contained."""
    out = Path(out)
    prepare_output(out / "meta.json", force, inputs=[run])
    base_meta = read_meta(run)
    base = load(run, device)
    defense = RegenerationDefense(
        layers=tuple(layers),
        fraction=fraction,
        attack=attack,
        xi=xi,
        uaps=uaps,
        epochs=epochs,
        train_limit=train_limit,
        batch_size=batch_size,
        lr=lr,
        attack_images=attack_images,
    )
    defense.resolve_layers(base)  # bad layer names fail here, before any attack
    if force:  # --force recomputes everything, the cached perturbations too
        shutil.rmtree(out / "perturbations", ignore_errors=True)
    info = base_meta["dataset"]
    context = PrepareContext(
        train=load_dataset(info["name"], "train", info.get("data_dir")),
        test=load_dataset(info["name"], "test", info.get("data_dir")),
        base_config=model_config(run, base_meta),
        device=torch.device(device),
        seed=seed,
        quiet=quiet,
    )
    defense.prepare(base, out, context)
    save_tensors(out / "base.safetensors", base.state_dict())
    meta: SFRMeta = {
        "format": SFR_FORMAT,
        "version": __version__,
        "model": base_meta["model"],
        "dataset": base_meta["dataset"],
        "base_run": str(run),
        "layers": list(layers),
        "fraction": fraction,
        "attack": attack,
        "xi": xi,
        "uaps": uaps,
        "epochs": epochs,
        "train_limit": train_limit,
        "seed": seed,
        "history": read_json(out / DONE_FILE)["history"],
        "command": command,
    }
    write_json(out / "meta.json", meta)
    return meta


def load_sfr(
    directory: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, nn.Module, SFRMeta]:
    """(baseline, defended, metadata) of an SFR directory, both in eval mode."""
    directory = Path(directory)
    if not (directory / "meta.json").is_file():
        raise RobustlabError(
            f"{directory}: not an SFR directory; create one with robustlab sfr train"
        )
    meta = read_json(directory / "meta.json")
    found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    if found != SFR_FORMAT:
        raise RobustlabError(f"{directory}/meta.json: unknown format {found!r}")
    try:
        config = ModelConfig.from_dict(meta["model"], origin=directory / "meta.json")
        base = create(config)
    except (TypeError, ValueError, KeyError) as err:
        raise RobustlabError(f"{directory}/meta.json: malformed model config ({err})") from None
    layers, fraction = meta.get("layers"), meta.get("fraction")
    if not (isinstance(layers, list) and all(isinstance(name, str) for name in layers)) or not (
        isinstance(fraction, int | float) and isinstance(meta.get("dataset"), dict)
    ):
        raise RobustlabError(f"{directory}/meta.json: malformed (layers, fraction, dataset)")
    base.load_state_dict(load_tensors(directory / "base.safetensors")[0])
    base = placed(base, config, device).eval()
    defense = RegenerationDefense(layers=tuple(layers), fraction=float(fraction))
    return base, defense.wrap(base, directory), cast(SFRMeta, meta)


def _evaluation_perturbation(
    directory: str | Path,
    meta: SFRMeta,
    models: dict[str, nn.Module],
    *,
    attack: str,
    xi: float,
    against: str,
    seed: int,
    attack_images: int,
    device: torch.device | str,
) -> UniversalPerturbation:
    """The perturbation evaluations use: computed on training images against ``models[against]``,
    cached in the SFR directory's ``perturbations/``."""
    if against not in models:
        raise RobustlabError(f"--against {against!r} must be 'baseline' or 'defended'")
    train = _train_split(meta, attack_images, derive_seed(seed, "eval-attack"))
    name = f"{attack}-xi{round(xi * 255, 2):g}-{against}-seed{seed}"
    if against == "defended":  # a perturbation against these FRUs, not earlier ones
        digest = hashlib.sha256((Path(directory) / "fru.safetensors").read_bytes()).hexdigest()
        name += f"-fru{digest[:12]}"
    name += f"-n{attack_images}.safetensors"
    return universal_perturbation(
        Path(directory) / "perturbations" / name,
        models[against],
        attack,
        train.tensors(device)[0],
        {"xi": xi, "seed": seed},
    )


def evaluate_sfr(
    directory: str | Path,
    attack: str = "uap",
    xi: float = 10 / 255,
    *,
    against: str = "baseline",
    n: int = 1000,
    attack_images: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    perturbation_file: str | Path | None = None,
) -> SFREvaluation:
    """Fooling rates, accuracies and restoration accuracy of baseline and defended model.

    The perturbation is computed on training images against the baseline (or,
    ``against="defended"``, against baseline + FRUs: the white-box secondary
    attack) and evaluated on ``n`` seeded test images; or it is read from
    ``perturbation_file`` (robustlab's format, e.g. from ``robustlab universal import``).
    """
    base, defended, meta = load_sfr(directory, device)
    models = {"baseline": base, "defended": defended}
    test = sample(
        load_dataset(meta["dataset"]["name"], "test", meta["dataset"].get("data_dir")), n, seed
    )
    x, y = test.tensors(device)
    perturbation = _chosen_perturbation(
        perturbation_file,
        x.shape[1:],
        lambda: _evaluation_perturbation(
            directory,
            meta,
            models,
            attack=attack,
            xi=xi,
            against=against,
            seed=seed,
            attack_images=attack_images,
            device=device,
        ),
    )
    if perturbation_file is not None:
        attack, against = f"file:{Path(perturbation_file).name}", "imported"
        xi = float(perturbation.delta.abs().max())
    x_adv = apply(x, perturbation.delta.to(device))
    labels = y.cpu()
    predictions = {name: (predict(m, x), predict(m, x_adv)) for name, m in models.items()}
    base_clean = float((predictions["baseline"][0] == labels).float().mean())

    def scores(name: str) -> Scores:
        clean_pred, adv_pred = predictions[name]
        clean = float((clean_pred == labels).float().mean())
        perturbed = float((adv_pred == labels).float().mean())
        return {
            "clean": clean,
            "perturbed": perturbed,
            "fooling_rate": float((clean_pred != adv_pred).float().mean()),
            "restoration": restoration_accuracy(clean, perturbed, base_clean),
        }

    return {
        "attack": attack,
        "xi": xi,
        "against": against,
        "n": len(y),
        "linf": float(perturbation.delta.abs().max()),
        "l2": float(perturbation.delta.norm()),
        "baseline": scores("baseline"),
        "defended": scores("defended"),
    }


def _chosen_perturbation(
    path: str | Path | None,
    shape: tuple[int, ...],
    compute: Callable[[], UniversalPerturbation],
) -> UniversalPerturbation:
    """The perturbation in ``path`` (robustlab's format, checked against the images'
    ``shape``) if one is given, else the one ``compute`` makes."""
    if path is None:
        return compute()
    perturbation = UniversalPerturbation.load(path)
    perturbation.check_fits(shape, str(path))
    return perturbation


def classify_image(
    directory: str | Path,
    image: str | Path,
    attack: str = "uap",
    *,
    xi: float = 10 / 255,
    defense: bool = True,
    against: str = "baseline",
    seed: int = 0,
    device: torch.device | str = "cpu",
    perturbation_file: str | Path | None = None,
) -> str:
    """Top-1 class of one image file, clean and with the universal perturbation added: the
    one in ``perturbation_file`` (robustlab's format) if given, else ``attack``'s at ``xi``."""
    base, defended, meta = load_sfr(directory, device)
    model = defended if defense else base
    config = meta["model"]
    path = Path(image)
    if not path.is_file():
        raise RobustlabError(f"{image}: no such image file")
    pixels = decode_image(path.read_bytes(), str(path), int(config["in_channels"]))
    x = torch.from_numpy(pixels.copy()).float().div(255).unsqueeze(0).to(device)
    size = int(config["image_size"])
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    models = {"baseline": base, "defended": defended}
    perturbation = _chosen_perturbation(
        perturbation_file,
        x.shape[1:],
        lambda: _evaluation_perturbation(
            directory,
            meta,
            models,
            attack=attack,
            xi=xi,
            against=against,
            seed=seed,
            attack_images=256,
            device=device,
        ),
    )
    linf = 255 * float(perturbation.delta.abs().max())
    what = (
        f"{Path(perturbation_file).name} (ℓ∞ {linf:.4g}/255)"
        if perturbation_file is not None
        else f"{attack} ξ={255 * xi:g}/255"
    )
    classes = meta["dataset"].get("classes") or []
    delta = perturbation.delta.to(x.device)
    labels = [int(predict(model, x)[0]), int(predict(model, apply(x, delta))[0])]
    names = [classes[i] if i < len(classes) else str(i) for i in labels]
    state = "on" if defense else "off"
    return f"defense {state}: clean -> {names[0]}; {what} -> {names[1]}"

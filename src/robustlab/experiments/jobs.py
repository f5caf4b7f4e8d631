"""Library functions behind the CLI commands: train a run, evaluate it, run the demo."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.assemble import create
from robustlab.attacks import AdversarialSet, Ensemble
from robustlab.attacks.adversarial_set import generate_set, save_set
from robustlab.attacks.base import Params
from robustlab.data import Dataset, load_dataset, sample, sample_indices
from robustlab.defenses.training_time import TrainingDefense, model_with, recipe_with
from robustlab.distributed import local_device
from robustlab.io import RobustlabError, prepare_output, writes_output
from robustlab.models.base import accuracy
from robustlab.models.config import ModelConfig
from robustlab.models.external import ExternalNet, load_weights, read_state_dict
from robustlab.models.meta import DatasetMeta, RunMeta
from robustlab.runs import load, read_meta, save_run
from robustlab.training import FastPath, TrainConfig, train


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = torch.device("meta")  # refused just below, with the same message
    if device.type not in ("cpu", "cuda"):  # mps, meta, xla...: not what robustlab runs on
        raise RobustlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RobustlabError(f"device {name!r} asked for, but torch sees no GPU; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RobustlabError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s); use cuda:0"
        )
    return local_device(device)


def model_config_for(data: Dataset, arch: str, **options: Any) -> ModelConfig:
    """A plain model config sized for ``data``: its classes, channels, image size and
    statistics (training-time defenses are built in by
    :func:`robustlab.defenses.training_time.model_with`)."""
    return ModelConfig(
        arch=arch,
        num_classes=len(data.classes),
        in_channels=data.channels,
        image_size=data.image_size,
        mean=data.mean,
        std=data.std,
        options=options,
    )


def train_model(
    *,
    dataset: str,
    arch: str,
    out: str | Path,
    config: TrainConfig,
    defenses: Sequence[TrainingDefense] = (),
    options: dict[str, object] | None = None,
    data_dir: str | None = None,
    download: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    resume: bool = False,
    force: bool = False,
    device: str = "auto",
    quiet: bool = False,
    fast: FastPath | None = None,
) -> RunMeta:
    """Train ``arch`` with the training-time ``defenses`` on ``dataset`` into the run
    directory ``out``; return its metadata."""
    train_data = sample(
        load_dataset(dataset, "train", data_dir, download), train_limit, config.seed
    )
    test_data = sample(load_dataset(dataset, "test", data_dir, download), test_limit, config.seed)
    model_config = model_with(defenses, model_config_for(train_data, arch, **(options or {})))
    config = recipe_with(defenses, config)
    dataset_meta: DatasetMeta = {
        "data_dir": data_dir,
        "train_limit": train_limit,
        "test_limit": test_limit,
    }
    return train(
        model_config,
        train_data,
        test_data,
        config,
        out,
        resume=resume,
        force=force,
        device=resolve_device(device),
        quiet=quiet,
        dataset_meta=dataset_meta,
        fast=fast,
    )


def import_pretrained(
    model_config: ModelConfig,
    weights: str | Path,
    run_dir: str | Path,
    test_data: Dataset,
    *,
    dataset_meta: DatasetMeta,
    device: torch.device | str = "cpu",
) -> RunMeta:
    """A run directory for a model trained elsewhere: ``model_config`` built with the weights
    of ``weights`` (:func:`~robustlab.models.external.read_state_dict`: safetensors or a
    weights-only state dict), its test accuracy measured; returns the run's metadata."""
    model = create(model_config)
    if isinstance(model, ExternalNet):
        load_weights(model, weights)
    else:
        try:
            model.load_state_dict(read_state_dict(weights))
        except RuntimeError as err:
            raise RobustlabError(
                f"{weights}: weights do not fit {model_config.arch} ({str(err).splitlines()[0]})"
            ) from None
    model = model.to(device).eval()
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    dataset: DatasetMeta = {"name": test_data.name, "classes": list(test_data.classes)}
    dataset.update(dataset_meta)
    meta: RunMeta = {
        "dataset": dataset,
        "imported": {"weights": str(Path(weights).resolve()), "sha256": digest},
        "complete": True,
        "test_accuracy": accuracy(model, test_data, batch_size=256),
    }
    save_run(run_dir, model, model_config, meta)
    return read_meta(run_dir)


def evaluate_clean(
    run: str | Path,
    *,
    split: str = "test",
    data_dir: str | None = None,
    limit: int | None = None,
    device: str = "auto",
) -> tuple[float, int]:
    """Top-1 accuracy of a run on its dataset's ``split``: (accuracy, number of images)."""
    meta = read_meta(run)
    data = load_dataset(meta["dataset"]["name"], split, data_dir or meta["dataset"]["data_dir"])
    data = sample(data, limit)
    model = load(run, resolve_device(device))
    return accuracy(model, data), len(data)


def load_sources(runs: Sequence[str | Path], device: torch.device) -> tuple[nn.Module, RunMeta]:
    """One run, or the logit-averaging ensemble of several; with the first run's metadata."""
    if not runs:
        raise ValueError("give at least one --source run")
    metas = [read_meta(run) for run in runs]
    shapes = {
        (m["dataset"]["name"], m["model"]["in_channels"], m["model"]["image_size"]) for m in metas
    }
    if len(shapes) > 1:
        pairs = zip(runs, metas, strict=True)
        found = ", ".join(f"{run}: {m['dataset']['name']}" for run, m in pairs)
        raise RobustlabError(
            f"the --source runs were trained on different data ({found}); "
            "ensemble runs of one dataset"
        )
    models = [load(run, device) for run in runs]
    return (models[0] if len(models) == 1 else Ensemble(models).eval()), metas[0]


@writes_output("out", "robustlab attack", file=True)
def make_adversarial_set(
    *,
    sources: Sequence[str | Path],
    attack: str,
    params: Params,
    out: str | Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    quantize: bool = True,
    target: int | None = None,
    force: bool = False,
    device: str = "auto",
    quiet: bool = False,
) -> AdversarialSet:
    """Attack the source run(s) on ``n`` seeded test images and save the set to ``out``."""
    out = prepare_output(out, force, inputs=sources)
    model, meta = load_sources(sources, resolve_device(device))
    name = dataset or meta["dataset"]["name"]
    if name != meta["dataset"]["name"]:
        raise RobustlabError(
            f"--dataset {name} differs from the one the source was trained on "
            f"({meta['dataset']['name']}); drop --dataset or use another source"
        )
    data_dir = data_dir or meta["dataset"].get("data_dir")
    data = load_dataset(name, split, data_dir)
    indices = sample_indices(len(data), n, seed)
    adv_set = generate_set(
        model,
        data,
        indices,
        attack,
        params,
        seed=seed,
        batch_size=batch_size,
        quantize=quantize,
        target=target,
        quiet=quiet,
        config={"sources": [str(s) for s in sources], "n": len(indices), "data_dir": data_dir},
    )
    save_set(out, adv_set)
    return adv_set

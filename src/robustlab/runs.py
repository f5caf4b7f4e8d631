"""Run directories: ``model.safetensors`` + ``meta.json``; ``load(run_dir)`` rebuilds the model.

``meta.json`` holds the model config (architecture, defect spec with its mask seed,
normalisation), the dataset, the training config and history, and the package
version, so a run can be rebuilt exactly, without unpickling anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from robustlab.assemble import create
from robustlab.io import (
    RobustlabError,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from robustlab.models.base import declare_input, place
from robustlab.models.config import ModelConfig
from robustlab.models.cost import count_passes
from robustlab.models.external import is_external
from robustlab.models.meta import RunMeta
from robustlab.version import __version__

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
RUN_FORMAT = "robustlab-run/1"


def save_run(run_dir: str | Path, model: nn.Module, config: ModelConfig, meta: RunMeta) -> None:
    """Write the weights, then the metadata (each atomically): meta.json names a complete model.
    Its format, version and model config come from here, the rest from ``meta``."""
    run_dir = Path(run_dir)
    save_tensors(run_dir / MODEL_FILE, model.state_dict())
    document = meta.copy()
    document["format"], document["version"] = RUN_FORMAT, __version__
    document["model"] = config.to_dict()
    write_json(run_dir / META_FILE, document)


def read_meta(run_dir: str | Path) -> RunMeta:
    """The metadata of a run, with a clear error when the folder is not a run."""
    path = Path(run_dir) / META_FILE
    if not path.is_file():
        raise RobustlabError(f"{run_dir}: not a run directory (no {META_FILE}); train one first")
    meta: object = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise RobustlabError(f"{path}: unknown run format {found!r}")
    for key, inner in (("model", "arch"), ("dataset", "name")):
        if not isinstance(meta.get(key), dict) or inner not in meta[key]:
            raise RobustlabError(
                f"{path}: malformed run metadata ({key}.{inner} missing); "
                "re-train the run or restore its meta.json"
            )
    return cast(RunMeta, meta)  # the keys every reader needs are there


def model_config(run_dir: str | Path, meta: RunMeta | None = None) -> ModelConfig:
    """The model config of a run, as data: a factory named in its meta.json is imported only
    when the user trusts it (:func:`robustlab.models.external.check_trusted`)."""
    meta = read_meta(run_dir) if meta is None else meta
    try:
        return ModelConfig.from_dict(meta["model"], origin=Path(run_dir) / META_FILE)
    except (TypeError, ValueError, KeyError) as err:
        raise RobustlabError(f"{run_dir}/meta.json: malformed model config ({err})") from None


def check_run(
    run_dir: str | Path, expected: ModelConfig, meta: RunMeta | None = None
) -> ModelConfig:
    """The run's model config, refused unless it is ``expected`` (the config a caller keyed
    the folder by): a folder edited to describe another model is never evaluated."""
    config = model_config(run_dir, meta)
    if _as_json(config.to_dict()) != _as_json(expected.to_dict()):
        raise RobustlabError(
            f"{run_dir}/meta.json describes another model than the one this "
            "folder is keyed by; delete the folder to retrain it"
        )
    return config


def load(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    *,
    allow_incomplete: bool = False,
    expected: ModelConfig | None = None,
) -> nn.Module:
    """Rebuild the model of a run directory, in eval mode on ``device``.

    A run whose training was interrupted is refused unless ``allow_incomplete``: its
    numbers would silently describe a half-trained model. With ``expected`` (the config a
    caller keyed the folder by), a meta.json that describes another model is refused before
    anything is built: the folder was edited or belongs to something else.

    The network comes laid out for evaluation (:func:`placed`: a zoo network channels-last
    on the CPU); to train its weights further, ``place(model, device, channels_last=False)``
    first (:func:`robustlab.models.base.channels_last_pays` says why).
    """
    meta = read_meta(run_dir)
    if meta.get("complete") is False and not allow_incomplete:
        epochs = meta.get("train", {}).get("epochs", "?")
        raise RobustlabError(
            f"{run_dir}: training stopped at epoch {meta.get('epoch')} of {epochs}; finish it "
            "with the same `robustlab train ... --resume`"
        )
    config = model_config(run_dir, meta) if expected is None else check_run(run_dir, expected, meta)
    try:
        model = create(config)
    except (TypeError, ValueError, KeyError) as err:
        raise RobustlabError(f"{run_dir}/meta.json: malformed model config ({err})") from None
    tensors, _ = load_tensors(Path(run_dir) / MODEL_FILE)
    check_weights(tensors, model, Path(run_dir) / MODEL_FILE)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise RobustlabError(f"{run_dir}: weights do not match meta.json ({first})") from None
    shape = (config.in_channels, config.image_size, config.image_size)
    return count_passes(declare_input(placed(model, config, device).eval(), shape))


def placed(model: nn.Module, config: ModelConfig, device: str | torch.device) -> nn.Module:
    """A run's network on ``device`` for evaluation: a zoo network in the layout that pays
    there (:func:`robustlab.models.base.place`: channels-last on the CPU), a factory's
    network as its code built it (its ``forward`` may ``.view()`` activations, which
    channels-last strides refuse)."""
    return model.to(device) if is_external(config.arch) else place(model, device)


def check_weights(tensors: dict[str, torch.Tensor], model: nn.Module, where: Path) -> None:
    """Weights as the model has them: the same dtype per tensor (a cast to int would load
    silently) and finite values (NaN weights evaluate to chance, silently)."""
    expected = model.state_dict()
    for name, tensor in tensors.items():
        wanted = expected.get(name)
        if wanted is not None and tensor.dtype != wanted.dtype:
            raise RobustlabError(
                f"{where}: {name} is {tensor.dtype}, the model's is "
                f"{wanted.dtype}; re-train or restore the run"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RobustlabError(f"{where}: {name} has NaN or infinite values; re-train the run")


def _as_json(data: Any) -> Any:
    return json.loads(json.dumps(data, sort_keys=True))

"""Run directories: ``model.safetensors`` + ``meta.json``; ``load(run_dir)`` rebuilds the model.

``meta.json`` holds the model config (architecture, defect spec with its mask seed,
normalisation), the dataset, the training config and history, and the package
version, so a run can be rebuilt exactly, without unpickling anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab import __version__
from robustlab.assemble import ModelConfig
from robustlab.io import RobustlabError, load_tensors, read_json, save_tensors, write_json

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
RUN_FORMAT = "robustlab-run/1"


def save_run(run_dir: str | Path, model: nn.Module, config: ModelConfig, **meta: Any) -> None:
    """Write the weights, then the metadata (each atomically): meta.json names a complete model."""
    run_dir = Path(run_dir)
    save_tensors(run_dir / MODEL_FILE, model.state_dict())
    write_json(
        run_dir / META_FILE,
        {"format": RUN_FORMAT, "version": __version__, "model": config.to_dict(), **meta},
    )


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """The metadata of a run, with a clear error when the folder is not a run."""
    path = Path(run_dir) / META_FILE
    if not path.is_file():
        raise RobustlabError(f"{run_dir}: not a run directory (no {META_FILE}); train one first")
    meta: dict[str, Any] = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise RobustlabError(f"{path}: unknown run format {found!r}")
    for key, inner in (("model", "arch"), ("dataset", "name")):
        if not isinstance(meta.get(key), dict) or inner not in meta[key]:
            raise RobustlabError(f"{path}: malformed run metadata ({key}.{inner} missing); "
                                 "re-train the run or restore its meta.json")  # fmt: skip
    return meta


def load(
    run_dir: str | Path, device: str | torch.device = "cpu", *, allow_incomplete: bool = False
) -> nn.Module:
    """Rebuild the model of a run directory, in eval mode on ``device``.

    A run whose training was interrupted is refused unless ``allow_incomplete``: its
    numbers would silently describe a half-trained model.
    """
    meta = read_meta(run_dir)
    if meta.get("complete") is False and not allow_incomplete:
        epochs = meta.get("train", {}).get("epochs", "?")
        raise RobustlabError(
            f"{run_dir}: training stopped at epoch {meta.get('epoch')} of {epochs}; finish it "
            "with the same `robustlab train ... --resume`"
        )
    try:
        model = ModelConfig.from_dict(meta["model"]).build()
    except (TypeError, ValueError, KeyError) as err:
        raise RobustlabError(f"{run_dir}/meta.json: malformed model config ({err})") from None
    tensors, _ = load_tensors(Path(run_dir) / MODEL_FILE)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise RobustlabError(f"{run_dir}: weights do not match meta.json ({first})") from None
    return model.to(device).eval()

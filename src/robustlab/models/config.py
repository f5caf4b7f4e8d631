"""The records of a model: :class:`ModelConfig` (what a run's meta.json stores) and
:class:`DefectSpec` (where and how a network is defective). Plain data that round-trips
through JSON; building a model from them is :func:`robustlab.assemble.create`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from robustlab.io import JSONObject, RobustlabError
from robustlab.models.external import check_trusted

Mode = Literal["neuron", "channel", "shared"]
MODES: tuple[Mode, ...] = ("neuron", "channel", "shared")


class DefectRecord(TypedDict):
    """A :class:`DefectSpec` as meta.json stores it."""

    keep_prob: float
    blocks: str | list[int]
    mode: str
    widen: int
    seed: int


class ModelRecord(TypedDict):
    """A :class:`ModelConfig` as meta.json stores it."""

    arch: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: list[float] | None
    std: list[float] | None
    defect: DefectRecord | None
    regularizer: str | None
    regularizer_block: int
    regularizer_keep: float
    thermometer: int | None
    options: dict[str, object]  # the architecture's keyword arguments: JSON data (checked on read)


@dataclass(frozen=True)
class DefectSpec:
    """Where and how a network is defective.

    Parameters
    ----------
    keep_prob : p, the fraction of neurons kept, in (0, 1].
    blocks : ``"bottom"`` (blocks 0-2), ``"top"`` (last three), ``"all"`` or block indices.
    mode : ``"neuron"``, ``"channel"`` or ``"shared"`` (see module docstring).
    widen : channel multiplier of the defective blocks (the paper's ×n ablation).
    seed : mask seed; the same seed gives the same masks.
    """

    keep_prob: float
    blocks: str | tuple[int, ...] = "bottom"
    mode: Mode = "neuron"
    widen: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.keep_prob <= 1:
            raise ValueError(f"keep probability {self.keep_prob} must be in (0, 1], e.g. 0.1")
        if self.mode not in MODES:
            raise ValueError(f"unknown defect mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.widen < 1:
            raise ValueError(f"widen must be a positive integer, got {self.widen}")
        if isinstance(self.blocks, list):
            object.__setattr__(self, "blocks", tuple(self.blocks))

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> DefectSpec:
        """Parse ``BLOCKS:P[:MODE][:xN]``, e.g. ``bottom:0.1``, ``0,1,2:0.5:channel:x2``."""
        parts = text.split(":")
        if len(parts) < 2:
            raise ValueError(f"defect {text!r} must look like bottom:0.1 (blocks:keep_prob)")
        blocks: str | tuple[int, ...] = parts[0]
        if parts[0] not in ("bottom", "top", "all"):
            try:
                blocks = tuple(int(b) for b in parts[0].split(","))
            except ValueError:
                raise ValueError(
                    f"defect blocks {parts[0]!r} must be bottom, top, all or indices like 0,1,2"
                ) from None
        try:
            keep = float(parts[1])
        except ValueError:
            raise ValueError(f"keep probability {parts[1]!r} is not a number, e.g. 0.1") from None
        mode: Any = "neuron"
        widen = 1
        for extra in parts[2:]:
            if extra.startswith("x") and extra[1:].isdigit():
                widen = int(extra[1:])
            else:
                mode = extra
        return cls(keep, blocks, mode, widen, seed)

    def __str__(self) -> str:
        blocks = self.blocks if isinstance(self.blocks, str) else ",".join(map(str, self.blocks))
        extras = ("" if self.mode == "neuron" else f":{self.mode}") + (
            "" if self.widen == 1 else f":x{self.widen}"
        )
        return f"{blocks}:{self.keep_prob:g}{extras}"

    def to_dict(self) -> DefectRecord:
        return {
            "keep_prob": self.keep_prob,
            "blocks": self.blocks if isinstance(self.blocks, str) else list(self.blocks),
            "mode": self.mode,
            "widen": self.widen,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: JSONObject) -> DefectSpec:
        blocks = data["blocks"]
        return cls(
            keep_prob=float(data["keep_prob"]),
            blocks=blocks if isinstance(blocks, str) else tuple(blocks),
            mode=data.get("mode", "neuron"),
            widen=int(data.get("widen", 1)),
            seed=int(data.get("seed", 0)),
        )


@dataclass(frozen=True)
class ModelConfig:
    """Everything a run's model is built from (:func:`robustlab.assemble.create`), in a form
    that round-trips through JSON: a plain record, stored in every run's meta.json."""

    arch: str
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    defect: DefectSpec | None = None
    regularizer: str | None = None
    regularizer_block: int = 3
    regularizer_keep: float = 0.9
    thermometer: int | None = None
    options: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> ModelRecord:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "defect": self.defect.to_dict() if self.defect is not None else None,
            "regularizer": self.regularizer,
            "regularizer_block": self.regularizer_block,
            "regularizer_keep": self.regularizer_keep,
            "thermometer": self.thermometer,
            "options": self.options,
        }

    @classmethod
    def from_dict(cls, data: object, *, origin: str | Path) -> ModelConfig:
        """The config stored in the file ``origin`` (a run's meta.json, an SFR directory).

        Files are data: the architecture must be one :func:`check_trusted` allows (a factory
        read from a file runs only when the user named it) and every option a JSON value."""
        if not isinstance(data, dict):
            raise RobustlabError(f"{origin}: the model config is not a JSON object; restore it")
        data = dict(data)
        check_trusted(data.get("arch"), origin)
        options = data.get("options", {})
        if not isinstance(options, dict) or not _plain_data(options):
            raise RobustlabError(f"{origin}: model options must be JSON data; restore the file")
        if data.get("defect") is not None:
            data["defect"] = DefectSpec.from_dict(data["defect"])
        for key in ("mean", "std"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def _plain_data(value: Any) -> bool:
    """True for what JSON holds (numbers, strings, booleans, null, lists and string-keyed
    tables of them): arguments read from a file are data, never callables."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list):
        return all(_plain_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_data(v) for k, v in value.items())
    return False

"""Models with their training-time defenses: what a run directory describes.

The model registry (:mod:`robustlab.models`) builds plain networks; this module adds the
training-time defenses on top — defect masks (:mod:`robustlab.defenses.defective`), a
thermometer encoding and spatial dropout / DropBlock (:mod:`robustlab.defenses.baselines`)
— so that dependencies run one way: defenses modify models, models know no defenses.
:class:`ModelConfig` is the JSON-able record of all of it, stored in every run's meta.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.defenses.baselines import ThermometerEncoding, make_regularizer
from robustlab.defenses.defective import DefectSpec, make_defective
from robustlab.io import RobustlabError
from robustlab.models import BlockNet
from robustlab.models import build as build_plain
from robustlab.models.base import Widths, resolve_blocks
from robustlab.models.external import build_external, check_trusted, defect_layers, is_external


def build_model(
    arch: str,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    image_size: int = 32,
    defect: DefectSpec | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    regularizer: str | None = None,
    regularizer_block: int = 3,
    regularizer_keep: float = 0.9,
    thermometer: int | None = None,
    **kw: Any,
) -> BlockNet:
    """A zoo model with its training-time defenses, mapping pixels in [0, 1] to logits.

    Parameters
    ----------
    arch : one of :func:`robustlab.models.available`.
    defect : make the spec's blocks defective (masks sized for ``image_size``).
    mean, std : per-channel normalisation (default 0.5 / 0.5), applied inside the model.
    regularizer : ``"dropout2d"`` or ``"dropblock"`` after block ``regularizer_block``.
    thermometer : encode the input with this many thermometer levels (``mean``/``std``
        then apply to the encoded channels; default 0.5 / 0.5).
    kw : architecture knobs, e.g. ``width`` for ResNets and LeNet, ``growth`` for DenseNet.
    """
    net_channels = in_channels * thermometer if thermometer else in_channels
    if thermometer:
        mean, std = None, None  # the dataset's statistics do not describe bits
    widths = Widths()
    if defect is not None and defect.widen > 1:
        plain = build_plain(arch, num_classes, net_channels, image_size, mean, std, **kw)
        widths = Widths(resolve_blocks(defect.blocks, plain.num_blocks, plain.bottom), defect.widen)
    model = build_plain(arch, num_classes, net_channels, image_size, mean, std, widths, **kw)
    if thermometer:
        model.encode = ThermometerEncoding(thermometer)
    if regularizer is not None:
        model.add_regularizer(regularizer_block, make_regularizer(regularizer, regularizer_keep))
    if defect is not None:
        example = torch.zeros(1, in_channels, image_size, image_size)
        make_defective(model, defect, example_input=example)
    return model


@dataclass(frozen=True)
class ModelConfig:
    """Everything :func:`build_model` (or a factory) needs, in a form that round-trips
    through JSON."""

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
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        if is_external(self.arch):
            return self._build_external()
        return build_model(
            self.arch,
            self.num_classes,
            self.in_channels,
            image_size=self.image_size,
            defect=self.defect,
            mean=self.mean,
            std=self.std,
            regularizer=self.regularizer,
            regularizer_block=self.regularizer_block,
            regularizer_keep=self.regularizer_keep,
            thermometer=self.thermometer,
            **self.options,
        )

    def _build_external(self) -> nn.Module:
        if self.regularizer is not None or self.thermometer is not None:
            raise ValueError(
                f"{self.arch}: regularizer and thermometer need a zoo architecture (robustlab list)"
            )
        model = build_external(
            self.arch,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            image_size=self.image_size,
            mean=self.mean,
            std=self.std,
            options=self.options,
        )
        if self.defect is not None:
            if self.defect.widen > 1:
                raise ValueError("widened defective blocks (xN) need a zoo architecture")
            names = self.options.get("defect_layers") or defect_layers(model, self.defect.blocks)
            example = torch.zeros(1, self.in_channels, self.image_size, self.image_size)
            make_defective(model, self.defect, layers=list(names), example_input=example)
        return model

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["defect"] = self.defect.to_dict() if self.defect is not None else None
        for key in ("mean", "std"):
            data[key] = list(data[key]) if data[key] is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str | Path) -> ModelConfig:
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

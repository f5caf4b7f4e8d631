"""The model registry: ``build(arch, ...)`` for every architecture, defects included."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from robustlab.defenses.baselines import ThermometerEncoding, make_regularizer
from robustlab.defenses.defective import DefectSpec, make_defective
from robustlab.models.base import BlockNet, Widths, resolve_blocks
from robustlab.models.densenet import densenet
from robustlab.models.external import build_external, is_external
from robustlab.models.lenet import lenet
from robustlab.models.preact import preact_resnet
from robustlab.models.resnet import BasicBlock, Bottleneck, resnet
from robustlab.models.vgg import VGG19, vgg

Builder = Callable[..., BlockNet]

# Each builder takes num_classes, in_channels, image_size, mean, std, widths (+ its own knobs).
_ARCHS: dict[str, Builder] = {
    "lenet": lambda width=16, image_size=32, **kw: lenet(width, **kw),
    "resnet8": lambda width=16, image_size=32, **kw: resnet(
        BasicBlock, (1, 1, 1), (width, 2 * width, 4 * width), **kw
    ),
    "resnet10": lambda width=16, image_size=32, **kw: resnet(
        BasicBlock, (1, 1, 1, 1), (width, 2 * width, 4 * width, 8 * width), **kw
    ),
    "resnet18": lambda width=64, image_size=32, **kw: resnet(
        BasicBlock, (2, 2, 2, 2), (width, 2 * width, 4 * width, 8 * width), **kw
    ),
    "resnet50": lambda width=64, image_size=32, **kw: resnet(
        Bottleneck, (3, 4, 6, 3), (width, 2 * width, 4 * width, 8 * width), **kw
    ),
    "senet18": lambda width=64, image_size=32, **kw: preact_resnet(
        (2, 2, 2, 2), (width, 2 * width, 4 * width, 8 * width), width, se=True, **kw
    ),
    "wrn32_4": lambda width=16, image_size=32, **kw: preact_resnet(
        (5, 5, 5), (16 * 4, 32 * 4, 64 * 4), width, se=False, bottom=(0, 1), **kw
    ),
    "densenet121": lambda growth=32, image_size=32, **kw: densenet((6, 12, 24, 16), growth, **kw),
    "vgg19": lambda image_size=32, **kw: vgg(VGG19, image_size=image_size, **kw),
}


def available() -> list[str]:
    """Architecture names accepted by :func:`build`."""
    return sorted(_ARCHS)


def build(
    arch: str,
    num_classes: int = 10,
    in_channels: int = 3,
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
    """Build a zoo model that maps pixels in [0, 1] to logits.

    Parameters
    ----------
    arch : one of :func:`available`.
    defect : make the spec's blocks defective (masks sized for ``image_size``).
    mean, std : per-channel normalisation (default 0.5 / 0.5), applied inside the model.
    regularizer : ``"dropout2d"`` or ``"dropblock"`` after block ``regularizer_block``.
    thermometer : encode the input with this many thermometer levels (``mean``/``std``
        then apply to the encoded channels; default 0.5 / 0.5).
    kw : architecture knobs, e.g. ``width`` for ResNets and LeNet, ``growth`` for DenseNet.
    """
    if arch not in _ARCHS:
        raise ValueError(
            f"unknown architecture {arch!r}; choose one of {', '.join(available())} or a "
            "factory: torchvision:NAME, timm:NAME, package.module:function"
        )
    widths = Widths()
    net_channels = in_channels * thermometer if thermometer else in_channels
    if thermometer:
        mean, std = None, None  # the dataset's statistics do not describe bits
    if defect is not None and defect.widen > 1:
        plain = _construct(arch, num_classes, net_channels, image_size, mean, std, Widths(), kw)
        widths = Widths(resolve_blocks(defect.blocks, plain.num_blocks, plain.bottom), defect.widen)
    model = _construct(arch, num_classes, net_channels, image_size, mean, std, widths, kw)
    if thermometer:
        model.encode = ThermometerEncoding(thermometer)
    if regularizer is not None:
        model.add_regularizer(regularizer_block, make_regularizer(regularizer, regularizer_keep))
    if defect is not None:
        example = torch.zeros(1, in_channels, image_size, image_size)
        make_defective(model, defect, example_input=example)
    return model


def _construct(
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    widths: Widths,
    kw: dict[str, Any],
) -> BlockNet:
    return _ARCHS[arch](
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        mean=mean if mean is not None else (0.5,) * in_channels,
        std=std if std is not None else (0.5,) * in_channels,
        widths=widths,
        **kw,
    )


@dataclass(frozen=True)
class ModelConfig:
    """Everything :func:`build` needs, in a form that round-trips through JSON."""

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
            if self.regularizer is not None or self.thermometer is not None:
                raise ValueError(f"{self.arch}: regularizer and thermometer need a zoo "
                                 "architecture (robustlab list)")  # fmt: skip
            return build_external(
                self.arch, num_classes=self.num_classes, in_channels=self.in_channels,
                image_size=self.image_size, mean=self.mean, std=self.std, defect=self.defect,
                options=self.options,
            )  # fmt: skip
        return build(
            self.arch, self.num_classes, self.in_channels, self.image_size, self.defect,
            self.mean, self.std, self.regularizer, self.regularizer_block, self.regularizer_keep,
            self.thermometer, **self.options,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["defect"] = self.defect.to_dict() if self.defect is not None else None
        for key in ("mean", "std"):
            data[key] = list(data[key]) if data[key] is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        if data.get("defect") is not None:
            data["defect"] = DefectSpec.from_dict(data["defect"])
        for key in ("mean", "std"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

"""The model registry: ``build(arch, ...)`` for every zoo architecture, as a plain model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from robustlab.models.base import BlockNet, Widths
from robustlab.models.densenet import densenet
from robustlab.models.external import FACTORY_HINT
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
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    widths: Widths | None = None,
    **kw: Any,
) -> BlockNet:
    """Build a plain zoo model that maps pixels in [0, 1] to logits.

    Parameters
    ----------
    arch : one of :func:`available`.
    mean, std : per-channel normalisation (default 0.5 / 0.5), applied inside the model.
    widths : per-block channel multipliers (the Defective-CNN paper's ×n ablation).
    kw : architecture knobs, e.g. ``width`` for ResNets and LeNet, ``growth`` for DenseNet.

    Training-time defenses (defect masks, thermometer encoding, spatial dropout) are added
    by :func:`robustlab.assemble.build_model`; models know no defenses.
    """
    if arch not in _ARCHS:
        raise ValueError(
            f"unknown architecture {arch!r}; choose one of {', '.join(available())} "
            f"or {FACTORY_HINT}"
        )
    return _construct(arch, num_classes, in_channels, image_size, mean, std, widths or Widths(), kw)


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

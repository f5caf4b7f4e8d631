"""The model registry: ``build(arch, ...)`` for every zoo architecture, as a plain model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robustlab.models import densenet, lenet, preact, resnet, vgg
from robustlab.models.base import ARCHITECTURES, BlockNet, Widths
from robustlab.models.external import FACTORY_HINT

MODULES = (densenet, lenet, preact, resnet, vgg)  # each registers its builders


def available(pattern: str = "*") -> list[str]:
    """Architecture names accepted by :func:`build` that match the shell ``pattern``."""
    return ARCHITECTURES.names(pattern)


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
    if arch not in ARCHITECTURES:
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
    kw: dict[str, object],
) -> BlockNet:
    return ARCHITECTURES.get(arch)(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        mean=mean if mean is not None else (0.5,) * in_channels,
        std=std if std is not None else (0.5,) * in_channels,
        widths=widths,
        **kw,
    )

"""Models with their training-time defenses: what a run directory describes.

The model registry (:mod:`robustlab.models`) builds plain networks; this module adds the
training-time defenses on top — defect masks (:mod:`robustlab.defenses.defective`), a
thermometer encoding and spatial dropout / DropBlock (:mod:`robustlab.defenses.baselines`)
— so that dependencies run one way: defenses modify models, models know no defenses.
:class:`ModelConfig` is the JSON-able record of all of it, stored in every run's meta.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustlab.defenses.baselines import ThermometerEncoding, make_regularizer
from robustlab.defenses.defective import make_defective
from robustlab.models import BlockNet
from robustlab.models import build as build_plain
from robustlab.models.base import Widths, resolve_blocks
from robustlab.models.config import DefectSpec, ModelConfig
from robustlab.models.external import build_external, defect_layers, is_external


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


def create(config: ModelConfig) -> nn.Module:
    """The model ``config`` describes: a zoo model or a factory's, with its training-time
    defenses (defect masks, thermometer, spatial dropout) built in."""
    if is_external(config.arch):
        return _create_external(config)
    return build_model(
        config.arch,
        config.num_classes,
        config.in_channels,
        image_size=config.image_size,
        defect=config.defect,
        mean=config.mean,
        std=config.std,
        regularizer=config.regularizer,
        regularizer_block=config.regularizer_block,
        regularizer_keep=config.regularizer_keep,
        thermometer=config.thermometer,
        **config.options,
    )


def _create_external(config: ModelConfig) -> nn.Module:
    if config.regularizer is not None or config.thermometer is not None:
        raise ValueError(
            f"{config.arch}: regularizer and thermometer need a zoo architecture (robustlab list)"
        )
    model = build_external(
        config.arch,
        num_classes=config.num_classes,
        in_channels=config.in_channels,
        image_size=config.image_size,
        mean=config.mean,
        std=config.std,
        options=config.options,
    )
    if config.defect is not None:
        if config.defect.widen > 1:
            raise ValueError("widened defective blocks (xN) need a zoo architecture")
        names = config.options.get("defect_layers") or defect_layers(model, config.defect.blocks)
        if not (isinstance(names, list | tuple) and all(isinstance(n, str) for n in names)):
            raise ValueError(f"defect_layers {names!r} must be a list of layer names")
        example = torch.zeros(1, config.in_channels, config.image_size, config.image_size)
        make_defective(model, config.defect, layers=list(names), example_input=example)
    return model


__all__ = ["ModelConfig", "build_model", "create"]


def training_bytes(config: ModelConfig, batch_size: int) -> int | None:
    """An estimate of the memory training ``config`` at ``batch_size`` takes: per parameter
    the weights, their gradients, the momentum and the saved copy (4 floats), per batch the
    outputs of every layer (kept for the backward pass) and their gradients (2 floats each).

    Measured on the meta device, where nothing is allocated; None when the model cannot be
    built there (a factory's model: its code is the user's). A config that cannot be built
    at all (a defect block beyond the model's) raises its ValueError: the caller's plan
    check names the spec entry, before anything trains.
    """
    if is_external(config.arch):
        return None
    sizes: list[int] = []

    def record(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    try:
        with torch.device("meta"), torch.no_grad():
            model = create(config)
            leaves = [m for m in model.modules() if not list(m.children())]
            hooks = [m.register_forward_hook(record) for m in leaves]
            side = config.image_size
            model(torch.zeros(batch_size, config.in_channels, side, side))
            for hook in hooks:
                hook.remove()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    except ValueError:
        create(config)  # on the CPU: the config's own error, or a meta-device limitation
        return None
    parameters = sum(p.numel() for p in model.parameters())
    return 4 * (4 * parameters + 2 * sum(sizes))

"""Defective convolutional layers (Luo et al., "Defective Convolutional Networks").

A defective layer multiplies its post-BatchNorm, pre-activation output by a fixed
0/1 mask ``m`` of shape (C, H, W):  ``y = BN(conv(x)) ⊙ m``. Exactly
``round((1 - p) · C · H · W)`` entries of ``m`` are zero, drawn uniformly without
replacement from a generator seeded by the spec's seed and the layer's name, so
the same spec always gives the same masks. Variants:

- ``neuron``  : zeros anywhere in (C, H, W) (the paper's default);
- ``channel`` : ``round((1 - p) · C)`` whole channels are zero ("DC");
- ``shared``  : ``round((1 - p) · H · W)`` positions, the same in every channel ("SM").

Masks are persistent buffers (``<layer>.defect_mask``), saved in checkpoints, never
trained, and identical in train and eval mode.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustlab.models.config import DefectSpec, Mode
from robustlab.seeding import derive_seed


def layer_seed(seed: int, layer: str) -> int:
    """The seed of one layer's mask: derived from the spec seed and the layer name."""
    return derive_seed(seed, layer)


def _count_zeros(keep_prob: float, n: int) -> int:
    return math.floor((1 - keep_prob) * n + 0.5)


def make_mask(shape: Sequence[int], keep_prob: float, mode: Mode, seed: int) -> torch.Tensor:
    """A float 0/1 mask of ``shape`` = (C, H, W) with exactly the spec's number of zeros."""
    generator = torch.Generator().manual_seed(seed)
    channels = shape[0]
    spatial = math.prod(shape[1:])
    if mode == "neuron":
        pattern = _zero_positions(channels * spatial, keep_prob, generator)
        return pattern.view(*shape)
    if mode == "channel":
        per_channel = _zero_positions(channels, keep_prob, generator)
        return per_channel.view(channels, *([1] * (len(shape) - 1))).expand(*shape).clone()
    per_position = _zero_positions(spatial, keep_prob, generator)
    return per_position.view(1, *shape[1:]).expand(*shape).clone()


def _zero_positions(n: int, keep_prob: float, generator: torch.Generator) -> torch.Tensor:
    mask = torch.ones(n)
    mask[torch.randperm(n, generator=generator)[: _count_zeros(keep_prob, n)]] = 0
    return mask


def _apply_mask(module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    mask = module.get_buffer("defect_mask")
    if output.shape[1:] != mask.shape:
        raise RuntimeError(
            f"defective layer with mask {tuple(mask.shape)} got output {tuple(output.shape[1:])}; "
            "build the model for the input size it is used with (image_size=...)"
        )
    # In place: BatchNorm's backward does not need its output, and this saves a copy of
    # the activation (the overhead goal is <= 5% of a train step).
    return output.mul_(mask)


def make_defective(
    model: nn.Module,
    spec: DefectSpec,
    layers: Sequence[str] | None = None,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Make the outputs of ``layers`` defective, in place, and return ``model``.

    Parameters
    ----------
    model : any module; for a zoo model (one with a ``defect_layers(blocks)`` method)
        the layers default to the BatchNorm layers of ``spec.blocks``.
    spec : keep probability, mode and seed of the masks.
    layers : module names or shell-style patterns (``"features.[0-3].bn*"``) as in
        ``model.named_modules()``; each output is masked before the next activation.
    example_input : one input batch, run once to learn each layer's output shape.
    """
    if layers is None:
        if not hasattr(model, "defect_layers"):
            raise ValueError("make_defective needs layers=[names or patterns] for a custom model")
        layers = list(getattr(model, "defect_layers")(spec.blocks))  # noqa: B009
    if example_input is None:
        raise ValueError("make_defective needs example_input (one batch) to size the masks")
    chosen = _match_layers(model, layers)
    shapes = _output_shapes(model, chosen, example_input)
    for name, module in chosen.items():
        if hasattr(module, "defect_mask"):
            raise ValueError(f"layer {name!r} is already defective")
        mask = make_mask(shapes[name], spec.keep_prob, spec.mode, layer_seed(spec.seed, name))
        module.register_buffer("defect_mask", mask.to(example_input.device))
        module.register_forward_hook(_apply_mask)
    return model


def _match_layers(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    named = dict(model.named_modules())
    chosen: dict[str, nn.Module] = {}
    for pattern in layers:
        hits = [n for n in named if n and fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(f"no layer matches {pattern!r}; see model.named_modules() for names")
        chosen.update((n, named[n]) for n in hits)
    return chosen


def _output_shapes(
    model: nn.Module, chosen: dict[str, nn.Module], example_input: torch.Tensor
) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))
        )
        for name, module in chosen.items()
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def masks(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The (layer name, mask) pairs of a model's defective layers, in module order."""
    return [
        (name, module.defect_mask)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "defect_mask", None), torch.Tensor)
    ]

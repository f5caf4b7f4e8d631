"""Selective feature regeneration (Borkar, Heide and Karam, CVPR 2020).

For chosen convolution layers of a trained CNN, the output filters are ranked
by susceptibility to adversarial noise, measured by the ℓ1 norm of their
weights (largest first). A feature regeneration unit (FRU), a small residual
block, transforms the top ⌊C/2⌋ channels of the layer's raw output (before
BN or the nonlinearity); the other channels pass unchanged. The baseline's
weights are frozen; only the FRUs are trained, on batches that mix clean
images with universally perturbed ones.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from robustlab.io import RobustlabError


def susceptibility_ranking(conv: nn.Conv2d) -> torch.Tensor:
    """Output-filter indices sorted by the ℓ1 norm of their weights, highest first."""
    norms = conv.weight.detach().abs().flatten(1).sum(1)
    return torch.argsort(norms, descending=True, stable=True)


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class FeatureRegenerationUnit(nn.Module):
    """x + g(x), g = 1×1 N→D, 3×3 D→D, 3×3 D→D (each conv-BN-ReLU), then 1×1 D→N.

    The last convolution starts at zero, so a fresh unit is the identity.
    """

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or channels
        self.body = nn.Sequential(
            *_conv_bn_relu(channels, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3),
            *_conv_bn_relu(hidden, hidden, 3),
            nn.Conv2d(hidden, channels, 1),
        )
        last = self.body[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        regenerated: torch.Tensor = x + self.body(x)
        return regenerated


class RegeneratedConv(nn.Module):
    """A frozen convolution whose most susceptible output channels go through an FRU."""

    selected: torch.Tensor

    def __init__(self, conv: nn.Conv2d, fraction: float = 0.5, hidden: int | None = None):
        super().__init__()
        count = int(conv.out_channels * fraction)
        if count < 1:
            raise RobustlabError(
                f"fraction {fraction} of {conv.out_channels} channels selects none; raise it"
            )
        self.conv = conv
        self.register_buffer("selected", susceptibility_ranking(conv)[:count].clone())
        self.fru = FeatureRegenerationUnit(count, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        index = self.selected
        return out.index_copy(1, index, self.fru(out.index_select(1, index)))


def conv_layers(model: nn.Module) -> list[str]:
    """Names (as in ``named_modules()``) of the model's Conv2d layers, in order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def add_regeneration(
    model: nn.Module,
    layers: Sequence[str],
    fraction: float = 0.5,
    hidden: int | None = None,
) -> nn.Module:
    """A copy of ``model`` with FRUs on ``layers``; its own weights frozen, FRUs trainable.

    ``layers`` are Conv2d names from ``named_modules()`` (see :func:`conv_layers`).
    The copy is returned in eval mode, so that frozen BatchNorm statistics stay
    fixed; train FRUs with :func:`fru_train_mode`.
    """
    if not layers:
        raise RobustlabError("choose at least one layer; robustlab sfr layers RUN lists them")
    if not 0 < fraction <= 1:
        raise RobustlabError(f"fraction must lie in (0, 1], got {fraction}")
    defended = copy.deepcopy(model)
    for p in defended.parameters():
        p.requires_grad_(False)
    modules = dict(defended.named_modules())
    for name in layers:
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d):
            known = ", ".join(conv_layers(model)[:8])
            raise RobustlabError(f"{name!r} is not a Conv2d layer of the model; try one of {known}")
        parent_name, _, child = name.rpartition(".")
        parent = defended.get_submodule(parent_name) if parent_name else defended
        setattr(parent, child, RegeneratedConv(conv, fraction, hidden))
    return defended.eval()


def regeneration_units(model: nn.Module) -> list[FeatureRegenerationUnit]:
    return [m for m in model.modules() if isinstance(m, FeatureRegenerationUnit)]


def fru_train_mode(model: nn.Module) -> nn.Module:
    """Eval mode for the baseline (frozen BN statistics), train mode for the FRUs."""
    model.eval()
    for unit in regeneration_units(model):
        unit.train()
    return model


def fru_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for unit in regeneration_units(model) for p in unit.parameters()]


def fru_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The FRUs' weights and buffers (and the selected channels), by their model names."""
    return {
        name: tensor
        for name, tensor in model.state_dict().items()
        if ".fru." in f".{name}" or name.endswith(".selected")
    }


def restoration_accuracy(
    clean_correct: float, perturbed_correct: float, baseline_clean: float
) -> float:
    """(top-1 on clean + top-1 on perturbed) / (2 × the undefended model's clean top-1)."""
    if baseline_clean <= 0:
        raise ValueError("baseline clean accuracy must be positive")
    return (clean_correct + perturbed_correct) / (2 * baseline_clean)

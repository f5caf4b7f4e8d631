"""The shape every zoo model shares: normalisation, numbered blocks, a head.

Block 0 is the stem; blocks 1..K follow the order of the paper's appendix C, so
``bottom`` means blocks 0-2 for every architecture. Defects and regularisers are
placed by block index, which is why the blocks are a flat list.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel: the first layer, so every model takes pixels in [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BlockNet(nn.Module):
    """A classifier ``head(blocks[K](...blocks[0](normalize(encode(x)))))``.

    ``regularizers`` maps a block index (as a string) to a module applied to that
    block's output during training, e.g. spatial dropout after block 3.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        head: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.encode: nn.Module = nn.Identity()  # an input encoding, e.g. thermometer bits
        self.normalize = Normalize(mean, std)
        self.blocks = nn.ModuleList(blocks)
        self.regularizers = nn.ModuleDict()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(self.encode(x))
        for index, block in enumerate(self.blocks):
            x = block(x)
            key = str(index)
            if key in self.regularizers:
                x = self.regularizers[key](x)
        out: torch.Tensor = self.head(x)
        return out

    def defect_layers(self, blocks: str | Sequence[int]) -> list[str]:
        """The layers a defect on ``blocks`` masks: every BatchNorm inside those blocks."""
        return self.block_layers(resolve_blocks(blocks, len(self.blocks)))

    def block_layers(
        self, indices: Sequence[int], kind: type[nn.Module] = nn.BatchNorm2d
    ) -> list[str]:
        """Names (as in ``named_modules``) of the ``kind`` layers inside the given blocks."""
        names = []
        for index in indices:
            prefix = f"blocks.{index}."
            names += [
                prefix + n for n, m in self.blocks[index].named_modules() if isinstance(m, kind)
            ]
        return names


def resolve_blocks(blocks: str | Sequence[int], num_blocks: int) -> tuple[int, ...]:
    """Block indices for ``"bottom"`` (0-2), ``"top"`` (the last three), ``"all"`` or a list."""
    if blocks == "bottom":
        return tuple(range(min(3, num_blocks)))
    if blocks == "top":
        return tuple(range(max(0, num_blocks - 3), num_blocks))
    if blocks == "all":
        return tuple(range(num_blocks))
    if isinstance(blocks, str):
        raise ValueError(f"unknown block set {blocks!r}; use bottom, top, all or a list of indices")
    indices = tuple(int(b) for b in blocks)
    bad = [b for b in indices if not 0 <= b < num_blocks]
    if bad:
        raise ValueError(
            f"block index {bad[0]} out of range: this model has blocks 0..{num_blocks - 1}"
        )
    return indices


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) followed by BatchNorm: the unit whose BN output a defect masks."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False),
            bn=nn.BatchNorm2d(cout),
        )
    )


def conv_block(cin: int, cout: int, kernel: int = 3, pool: bool = False) -> nn.Sequential:
    """``conv_bn`` then ReLU (and 2×2 max-pooling): one block of the plain CNNs and stems."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        unit=conv_bn(cin, cout, kernel), relu=nn.ReLU()
    )
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


def pooled_linear(features: int, num_classes: int) -> nn.Sequential:
    """Global average pooling and one linear layer: the head of most zoo models."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(features, num_classes))


class Widths:
    """Channel counts per block, times ``factor`` in the widened blocks (the ×n ablation)."""

    def __init__(self, widened: Sequence[int] = (), factor: int = 1) -> None:
        self.widened = frozenset(widened)
        self.factor = factor

    def __call__(self, block: int, channels: int) -> int:
        return channels * self.factor if block in self.widened else channels


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no weight gradients for the block; both restored after.

    Attacks need gradients with respect to the input only; with the weights frozen,
    autograd records nothing for them and a user's ``.grad`` buffers stay untouched.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with eval_mode(model):
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a module with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels (on the CPU) for pixels ``x``, computed on the model's device."""
    device = model_device(model)
    with eval_mode(model):
        preds = [
            model(x[i : i + batch_size].to(device)).argmax(1).cpu()
            for i in range(0, len(x), batch_size)
        ]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)

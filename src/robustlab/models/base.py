"""The shape every zoo model shares: normalisation, a flat list of modules, a head.

Defects, widening and regularisers are placed by *block* in the paper's numbering
(its appendix C and released code): block 0 is the stem and blocks 1..K are the
stages, so ``bottom`` (blocks 0-2) of ResNet-18 is the stem and stages 1-2, ten
masked layers in all. ``BlockNet.stages`` maps each block to the indices of its
modules in ``BlockNet.layers``; for nets with one module per stage (ResNet-8/10,
LeNet) the two numberings coincide.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from robustlab.data import Dataset, batches
from robustlab.distributed import in_batch_order, my_batches
from robustlab.registry import Registry


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


# Builders of the zoo, registered where they are defined (``@ARCHITECTURES.register("name")``).
# Each takes num_classes, in_channels, image_size, mean, std, widths and its own knobs.
ARCHITECTURES: Registry[Callable[..., BlockNet]] = Registry("architecture")


class BlockNet(nn.Module):
    """A classifier ``head(blocks[K](...blocks[0](normalize(encode(x)))))``.

    ``blocks`` holds the modules in order (a residual block, a dense layer, a conv);
    ``stages[b]`` lists the indices of the modules that make up the paper's block ``b``
    (default: one module per block). ``regularizers`` maps a module index (as a string)
    to a module applied to its output during training, e.g. spatial dropout after
    block 3 (see :meth:`add_regularizer`).
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        head: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        stages: Sequence[Sequence[int]] | None = None,
        bottom: Sequence[int] = (0, 1, 2),
    ) -> None:
        super().__init__()
        self.encode: nn.Module = nn.Identity()  # an input encoding, e.g. thermometer bits
        self.normalize = Normalize(mean, std)
        self.blocks = nn.ModuleList(blocks)
        self.stages = (
            [list(s) for s in stages] if stages is not None else [[i] for i in range(len(blocks))]
        )
        self.bottom = tuple(b for b in bottom if b < len(self.stages))
        self.regularizers = nn.ModuleDict()
        self.head = head

    @property
    def num_blocks(self) -> int:
        """Blocks in the paper's numbering (0 = stem)."""
        return len(self.stages)

    def add_regularizer(self, block: int, module: nn.Module) -> None:
        """Apply ``module`` to the output of paper block ``block`` during training."""
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"regularizer block {block} is not in 0..{self.num_blocks - 1}")
        self.regularizers[str(self.stages[block][-1])] = module

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
        return self.block_layers(resolve_blocks(blocks, self.num_blocks, self.bottom))

    def block_layers(
        self, indices: Sequence[int], kind: type[nn.Module] = nn.BatchNorm2d
    ) -> list[str]:
        """Names (as in ``named_modules``) of the ``kind`` layers inside the given blocks."""
        names = []
        for index in (i for block in indices for i in self.stages[block]):
            prefix = f"blocks.{index}."
            names += [
                prefix + n for n, m in self.blocks[index].named_modules() if isinstance(m, kind)
            ]
        return names


def resolve_blocks(
    blocks: str | Sequence[int], num_blocks: int, bottom: Sequence[int] = (0, 1, 2)
) -> tuple[int, ...]:
    """Block indices for ``"bottom"`` (the architecture's: 0-2, or 0-1 for VGG and WRN as in
    the paper's code), ``"top"`` (every block above the bottom ones, as the paper's "34" of
    ResNet-18; the last block when nothing is above), ``"all"`` or a list."""
    low = tuple(b for b in bottom if b < num_blocks)
    if blocks == "bottom":
        return low
    if blocks == "top":
        above = tuple(range(max(low) + 1, num_blocks))
        return above or (num_blocks - 1,)
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


class ConvBN(nn.Sequential):
    r"""A convolution, then BatchNorm: the unit of every zoo network, whose BN output a
    defect masks. Its modules and weights are those of ``nn.Sequential(conv, bn)``.

    In eval mode BatchNorm is an affine map of the convolution's output z,

    .. math:: \gamma \, (z - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta = s\,z + \beta - s\,\mu,
              \qquad s = \gamma / \sqrt{\sigma^2 + \epsilon},

    so the unit is one convolution with weights :math:`s\,w` and bias
    :math:`\beta + s\,(b - \mu)`: one pass over the activations instead of two, in the
    forward pass and in an attack's backward pass (``benchmarks/layout.py``). The result is
    the two modules' up to float rounding. The folded weights are kept while the tensors
    they come from are the same tensors, unwritten (their version counters show an
    optimiser step or ``load_state_dict``; ``.to()`` and ``.eval()`` drop them), and are
    recomputed per call where autograd needs gradients of the weights. A write through
    ``.data`` bypasses the version counters: call ``.eval()`` after one.

    Training mode, a hook on either module (a defect mask, a probe of the convolution's
    output) or a module that is not a plain ``Conv2d``/``BatchNorm2d`` with running
    statistics (a regenerated convolution) runs the two modules as they are. Global module
    hooks see the unit, not its two modules, while it folds.
    """

    _folded: _Folded | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        conv, bn = self
        if self.training or not _foldable(conv, bn):
            out: torch.Tensor = super().forward(x)  # type: ignore[no-untyped-call]
            return out
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)  # _foldable
        sources = _sources(conv, bn)
        if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
            weight, bias = _fold(conv, bn)  # differentiable: weight gradients stay exact
        else:
            if self._folded is None or not self._folded.made_from(sources, bn.eps):
                self._folded = _Folded(conv, bn, sources)
            weight, bias = self._folded.weight, self._folded.bias
        folded: torch.Tensor = conv._conv_forward(x, weight, bias)
        return folded

    def train(self, mode: bool = True) -> ConvBN:
        self._folded = None  # made again from the weights by the next eval-mode call
        return super().train(mode)

    def _apply(self, fn: Callable[..., torch.Tensor], recurse: bool = True) -> ConvBN:
        self._folded = None  # .to(), .double(), ...: the weights are other tensors now
        return super()._apply(fn, recurse)  # type: ignore[no-untyped-call, no-any-return]


class _Folded:
    """A :class:`ConvBN`'s folded weights and what they were made from."""

    def __init__(
        self, conv: nn.Conv2d, bn: nn.BatchNorm2d, sources: tuple[torch.Tensor, ...]
    ) -> None:
        with torch.no_grad():
            self.weight, self.bias = _fold(conv, bn)
        # weak references: a copy of the unit (deepcopy) or a tensor made later at the same
        # address never passes for the tensors these were folded from
        self._refs = [weakref.ref(t) for t in sources]
        self._states = [_state(t) for t in sources]
        self._eps = bn.eps

    def made_from(self, sources: tuple[torch.Tensor, ...], eps: float) -> bool:
        """Whether ``sources`` (:func:`_sources`) and ``eps`` are what these were folded from."""
        return (
            eps == self._eps
            and len(sources) == len(self._refs)
            and all(
                ref() is t and state == _state(t)
                for ref, state, t in zip(self._refs, self._states, sources, strict=True)
            )
        )


def _state(t: torch.Tensor) -> tuple[int, int]:
    """A tensor's writes and storage: ``.to()`` and ``.data =`` change the storage."""
    return t._version, t.data_ptr()


def _sources(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, ...]:
    tensors = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return tuple(t for t in tensors if t is not None)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:
        return False
    statistics = bn.running_mean is not None and bn.running_var is not None
    return bn.affine and statistics and not (_hooked(conv) or _hooked(bn))


def _hooked(module: nn.Module) -> bool:
    hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks)
    return any(hooks) or bool(module._backward_pre_hooks)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(s w, β + s (b − μ)) with s = γ / √(σ² + ε): the convolution BN makes of ``conv``."""
    assert bn.running_mean is not None and bn.running_var is not None  # _foldable
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)  # keeps the weight's memory format
    shift = bn.running_mean if conv.bias is None else bn.running_mean - conv.bias
    return weight, torch.addcmul(bn.bias, shift, scale, value=-1)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> ConvBN:
    """Conv (no bias) followed by BatchNorm (:class:`ConvBN`)."""
    return ConvBN(
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


@contextmanager
def warm_started(model: nn.Module) -> Iterator[nn.Module]:
    """Let every part of ``model`` that solves an iterative problem per input start from its
    earlier solutions for the block (a module with a ``warm_start()`` context, such as the
    CSC purifier), and forget them after. Attacks run in this block: they query slowly
    moving inputs; what robustlab scores is predicted outside it."""
    with ExitStack() as stack:
        for module in model.modules():
            warm_start = getattr(module, "warm_start", None)
            if callable(warm_start):
                stack.enter_context(warm_start())
        yield model


_INPUT = "_robustlab_input_shape"  # (C, H, W) a network was built for (``declare_input``)


def declare_input(network: nn.Module, shape: tuple[int, int, int]) -> nn.Module:
    """Record the (C, H, W) images ``network`` was built for, so that an attack or an
    evaluation refuses other images instead of classifying them silently (a network with
    global pooling accepts a 4 × 4 batch built for 8 × 8 and answers nonsense)."""
    network.__dict__[_INPUT] = tuple(int(d) for d in shape)
    return network


def declared_input(model: nn.Module) -> tuple[int, int, int] | None:
    """The (C, H, W) some part of ``model`` declared (a run's network inside a defense)."""
    for module in model.modules():
        shape = module.__dict__.get(_INPUT)
        if shape is not None:
            return shape  # type: ignore[no-any-return]
    return None


def channels_last_pays(device: str | torch.device) -> bool:
    """Whether robustlab evaluates its networks channels-last (NHWC) on ``device``.

    On the CPU it does: oneDNN's convolutions take NHWC without the layout copies NCHW costs
    them. Measured on the specs' ResNet-8 (``python benchmarks/layout.py``, 2 cores of an AMD
    EPYC): an attack's forward and backward pass 1.2-1.4x faster, and bitwise reproducible.
    Training stays NCHW (:class:`robustlab.training.FastPath`): on the CPU, torch 2.13's
    channels-last *weight* gradients were not reproducible run to run, and one-thread runs
    crashed with heap corruption. On CUDA the layout stays as built (not measured there).
    """
    return torch.device(device).type == "cpu"


def place(
    model: nn.Module, device: str | torch.device, *, channels_last: bool | None = None
) -> nn.Module:
    """``model`` on ``device``, channels-last where :func:`channels_last_pays` (``None``),
    channels-last (``True``) or NCHW (``False``) where asked.

    For evaluation: forward passes and input gradients. Train weights in NCHW
    (``channels_last=False``). The layout changes no result beyond float32 rounding (the
    kernels sum in another order), so it is no part of a cache key, like the CPU's kind. A
    network with 5-D tensors (3-D convolutions) keeps its layout: channels-last is 4-D.
    """
    model = model.to(device)
    if any(t.dim() == 5 for t in (*model.parameters(), *model.buffers())):
        return model
    # Module.to converts in place (and returns the module)
    if channels_last or (channels_last is None and channels_last_pays(device)):
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    elif channels_last is False:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return model


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a module with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels (on the CPU) for pixels ``x``, computed on the model's device.

    Under torch.distributed the batches are shared among the processes.
    """
    if len(x) == 0:
        return torch.empty(0, dtype=torch.long)
    device = model_device(model)

    def labels(start: int, stop: int) -> torch.Tensor:
        found: torch.Tensor = model(x[start:stop].to(device)).argmax(1).cpu()
        return found

    with eval_mode(model):
        pieces = [labels(start, stop) for start, stop in my_batches(len(x), batch_size)]
        return in_batch_order(pieces, len(x), batch_size)


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``data``."""
    correct = 0
    with eval_mode(model):
        for x, y in batches(data, batch_size, device=model_device(model)):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / max(1, len(data))

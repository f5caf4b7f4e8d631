"""Models from the ecosystem: torchvision, timm, or any ``package.module:function`` factory.

An architecture name with a colon names a factory instead of a zoo model:

- ``"torchvision:resnet50"``: ``torchvision.models.get_model("resnet50", weights=None)``;
- ``"timm:resnet18"``: ``timm.create_model("resnet18", pretrained=False)``;
- ``"mypackage.models:make_net"``: ``mypackage.models.make_net()``.

**Trust.** Importing a ``package.module:function`` runs its code, so robustlab imports one
only when the user names it: on the command line (``--arch``, ``--trust-factory``), in the
spec being run, or in ``ROBUSTLAB_TRUST`` (comma-separated factory names). A factory name
read back from a file (a run's ``meta.json``, the spec copy in ``results.json``, an SFR
directory) is checked with :func:`check_trusted` and refused otherwise. ``torchvision:NAME``
and ``timm:NAME`` are looked up in those libraries' model registries (never imported by
name), so they need no trust; zoo names are looked up in robustlab's registry.

Factory keyword arguments come from the model options' ``factory_args`` (e.g.
``{num_classes = 10}``). The network is wrapped in :class:`ExternalNet`, which normalises
pixels in [0, 1] with the given mean/std first, as every robustlab model does. Nothing is
downloaded: weights come from a local file (:func:`read_state_dict`). Defect masks are
added by :mod:`robustlab.assemble`, by layer name (``defect_layers``, shell patterns) or on
the layers :func:`defect_layers` picks. The imports are lazy: torchvision and timm are
optional.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path

import torch
from torch import nn

from robustlab.io import RobustlabError
from robustlab.models.base import Normalize

EXTRAS = {"torchvision": "torchvision", "timm": "timm"}
FACTORY_HINT = "a factory: torchvision:NAME, timm:NAME, package.module:function"


TRUST_ENV = "ROBUSTLAB_TRUST"
REGISTRY_SOURCES = ("torchvision", "timm")  # model names looked up in a registry, not imported
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_granted: ContextVar[frozenset[str]] = ContextVar("trusted_factories", default=frozenset())


def is_external(arch: str) -> bool:
    """True for a factory name (``source:name``), False for a zoo architecture."""
    return ":" in arch


def trusted_factories() -> frozenset[str]:
    """The factories the user named: :func:`trusting` blocks and ``ROBUSTLAB_TRUST``."""
    from_env = {n.strip() for n in os.environ.get(TRUST_ENV, "").split(",") if n.strip()}
    return _granted.get() | from_env


@contextlib.contextmanager
def trusting(names: Iterable[str]) -> Iterator[None]:
    """Within the block, also trust the factories ``names`` (those the user named)."""
    token = _granted.set(_granted.get() | {n for n in names if is_external(n)})
    try:
        yield
    finally:
        _granted.reset(token)


def check_trusted(arch: object, origin: str | Path) -> str:
    """``arch`` read from the file ``origin``, if building it runs no code the user did not
    name (module docstring); else a one-line error naming the factory and the fix."""
    if not isinstance(arch, str):
        raise RobustlabError(f"{origin}: architecture {arch!r} is not a name; restore the file")
    if not is_external(arch):
        return arch  # a zoo name: looked up in the registry by models.build
    source, _, name = arch.partition(":")
    if source in REGISTRY_SOURCES:
        if not _MODEL_NAME.fullmatch(name):
            raise RobustlabError(f"{origin}: {source} model name {name!r} is not a plain name")
        return arch
    if arch not in trusted_factories():
        raise RobustlabError(
            f"{origin} names the factory {arch!r}, and robustlab imports no code named in a "
            f"file; if you trust it, pass --trust-factory {arch} (or set {TRUST_ENV}={arch})"
        )
    return arch


def resolve_factory(arch: str) -> Callable[..., nn.Module]:
    """The callable behind ``arch`` (module docstring); a clear error when it cannot be had."""
    source, _, name = arch.partition(":")
    if not source or not name:
        raise ValueError(f"architecture {arch!r}: use {FACTORY_HINT}")
    module_name = {"torchvision": "torchvision.models", "timm": "timm"}.get(source, source)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        extra = EXTRAS.get(source)
        hint = f"pip install {extra}" if extra else f"make {source!r} importable (PYTHONPATH)"
        raise RobustlabError(f"architecture {arch!r} needs {module_name} ({err}); {hint}") from None
    if source == "torchvision":
        return lambda **kw: module.get_model(name, weights=None, **kw)  # type: ignore[no-any-return]
    if source == "timm":
        return lambda **kw: module.create_model(name, pretrained=False, **kw)  # type: ignore[no-any-return]
    factory = getattr(module, name, None)
    if not callable(factory):
        raise RobustlabError(f"architecture {arch!r}: {module_name} has no function {name!r}")
    return factory  # type: ignore[no-any-return]


class ExternalNet(nn.Module):
    """``net(normalize(x))``: a user's network behind robustlab's pixel convention."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(self.normalize(x))
        return out


def defect_layers(model: nn.Module, blocks: str | tuple[int, ...]) -> list[str]:
    """Layers to make defective in a network without robustlab's blocks: its BatchNorm2d
    layers (Conv2d where it has none), in definition order; ``bottom`` takes the first
    three (the paper's bottom blocks), ``top`` the last three, ``all`` every one, a tuple
    of indices those."""
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    names = norms or [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ValueError("the model has no BatchNorm2d or Conv2d layer to make defective")
    if blocks == "bottom":
        return names[:3]
    if blocks == "top":
        return names[-3:]
    if blocks == "all":
        return names
    assert isinstance(blocks, tuple)
    if max(blocks, default=0) >= len(names):
        raise ValueError(f"defect layer indices {blocks} exceed the model's {len(names)} layers")
    return [names[i] for i in blocks]


def build_external(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    options: dict[str, object],
) -> ExternalNet:
    """Build ``arch`` from its factory, wrapped and checked (logits for ``num_classes``)."""
    unknown = set(options) - {"factory_args", "defect_layers"}  # the latter: for assemble
    if unknown:
        raise ValueError(
            f"architecture {arch!r}: unknown option {sorted(unknown)[0]!r} "
            "(external models take factory_args and defect_layers)"
        )
    factory_args = options.get("factory_args", {})
    if not isinstance(factory_args, dict):
        raise ValueError(f"architecture {arch!r}: factory_args must be a table of arguments")
    net = resolve_factory(arch)(**factory_args)
    model = ExternalNet(net, mean or (0.5,) * in_channels, std or (0.5,) * in_channels)
    example = torch.zeros(1, in_channels, image_size, image_size)
    model.eval()
    with torch.no_grad():
        logits = model(example)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise RobustlabError(
            f"architecture {arch!r} gives outputs of shape {tuple(logits.shape)} for one image; "
            f"the data has {num_classes} classes (set factory_args, e.g. num_classes)"
        )
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a local file: safetensors, or a PyTorch state dict read with
    ``torch.load(weights_only=True)`` (tensors only: never a full unpickle). A dict that
    wraps the weights under ``state_dict`` or ``model`` is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise RobustlabError(f"{path}: weights file not found; check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as err:  # safetensors raises its own error types
            raise RobustlabError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for anything beyond tensors and dicts
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RobustlabError(
            f"{path}: not a state dict loadable with weights_only=True "
            f"({first}); save model.state_dict() instead"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise RobustlabError(f"{path}: expected a dict of tensors (a state dict)")
    return {str(k): v for k, v in loaded.items()}


def load_weights(model: ExternalNet, path: str | Path) -> None:
    """Load a network's weights (keys of the bare network, or of the wrapper) into ``model``."""
    state = read_state_dict(path)
    target = model if any(k.startswith("net.") for k in state) else model.net
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise RobustlabError(
            f"{path}: weights do not fit the model ({str(err).splitlines()[0]})"
        ) from None
    # defect masks are buffers robustlab adds; every other key must match
    missing = [k for k in missing if not k.endswith("defect_mask")]
    if missing or unexpected:
        raise RobustlabError(
            f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); check the architecture and factory_args"
        )

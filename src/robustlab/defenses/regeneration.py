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
import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from robustlab.attacks.base import Params
from robustlab.attacks.universal import (
    UNIVERSAL_ATTACKS,
    UniversalPerturbation,
    apply,
    build_universal,
)
from robustlab.data import Dataset, batches, sample
from robustlab.defenses.base import DONE_FILE, Defended, Defense, PrepareContext, Surface
from robustlab.io import (
    RobustlabError,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from robustlab.models.base import BlockNet, model_device, place
from robustlab.runs import check_weights
from robustlab.seeding import derive_seed


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
    repeated = sorted({name for name in layers if list(layers).count(name) > 1})
    if repeated:
        raise RobustlabError(f"layer {repeated[0]!r} is named twice; name each layer once")
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


def synthesise(
    perturbations: list[torch.Tensor], xi: float, generator: torch.Generator
) -> torch.Tensor:
    """A new perturbation: a random convex combination of the given ones, scaled to ℓ∞ = ξ."""
    stack = torch.stack(perturbations)
    # Dirichlet(1) weights, drawn from our generator (normalised exponentials)
    weights = -torch.log(torch.rand(len(stack), generator=generator))
    weights = weights / weights.sum()
    mixed = (weights.view(-1, 1, 1, 1) * stack).sum(0)
    return mixed * (xi / mixed.abs().max().clamp_min(1e-12))


def train_frus(
    defended: nn.Module,
    data: Dataset,
    perturbations: list[torch.Tensor],
    xi: float,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device | str,
    quiet: bool,
) -> list[dict[str, float]]:
    """Adam on the FRUs; each batch: its clean images, and them with a synthesised perturbation."""
    optimiser = torch.optim.Adam(fru_parameters(defended), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        fru_train_mode(defended)
        start, total, seen = time.time(), 0.0, 0
        stream = batches(
            data, batch_size, shuffle=True, seed=derive_seed(seed, "epoch", epoch), device=device
        )
        for x, y in tqdm(
            stream,
            desc=f"sfr epoch {epoch + 1}/{epochs}",
            disable=True if quiet else None,
            leave=False,
        ):
            delta = synthesise(perturbations, xi, generator).to(device)
            mixed = torch.cat([x, apply(x, delta)])
            loss = F.cross_entropy(defended(mixed), torch.cat([y, y]))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            total, seen = total + float(loss.detach()) * len(x), seen + len(x)
        history.append(
            {"epoch": epoch + 1, "loss": total / max(1, seen), "seconds": time.time() - start}
        )
    return history


def auto_layers(model: nn.Module, count: int = 3) -> list[str]:
    """The paper's kind of FRU layers: the first convolution of each of the first ``count``
    stages. For zoo models a stage is a paper block (0 = stem); for any other model, a new
    stage starts wherever a convolution changes the number of channels or the stride."""
    if isinstance(model, BlockNet):
        names = []
        for stage in model.stages[:count]:
            prefix = f"blocks.{stage[0]}."
            block = model.blocks[stage[0]]
            inner = [n for n, m in block.named_modules() if isinstance(m, nn.Conv2d)]
            if inner:
                names.append(prefix + inner[0])
        return names
    names, last = [], None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            shape = (module.out_channels, module.stride)
            if shape != last:
                names.append(name)
                last = shape
    return names[:count]


def _digest(parts: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:12]


def universal_perturbation(
    cache: Path, model: nn.Module, attack: str, images: torch.Tensor, params: Params
) -> UniversalPerturbation:
    """Compute (or reuse from ``cache``) a universal perturbation against ``model``.

    ``cache`` must be named by everything the perturbation depends on: the attack and its
    parameters here are checked against the file's record on reuse.
    """
    if cache.exists():
        found = UniversalPerturbation.load(cache)
        recorded = {k: found.config.get(k) for k in ("attack", *params)}
        if recorded == {"attack": attack, **params}:
            return found
    perturbation = build_universal(attack, model, **params)(images)
    perturbation.save(cache)
    return perturbation


@dataclass(frozen=True, repr=False)
class RegenerationDefense(Defense):
    """Selective feature regeneration on a frozen base model (Borkar et al. 2020).

    Parameters (spec: ``regenerate = { layers = "auto", fraction = 0.5, attack = "uap",
    xi = 10, uaps = 5 }``, ξ in 0-255 units there, in [0, 1] here)
    ----------
    layers : Conv2d names, or ``("auto",)`` for :func:`auto_layers` (recorded when prepared).
    fraction : share of each layer's channels regenerated (most susceptible first).
    attack, xi, uaps : the universal attack, its ℓ∞ strength and how many perturbations are
        computed against the base model and mixed into the training batches.
    epochs, train_limit, batch_size, lr : the FRU training (Adam).
    attack_images : training images each universal perturbation is computed on.
    """

    layers: tuple[str, ...] = ("auto",)
    fraction: float = 0.5
    attack: str = "uap"
    xi: float = 10 / 255
    uaps: int = 3
    epochs: int = 3
    train_limit: int | None = 5000  # None: the whole training split
    batch_size: int = 64
    lr: float = 1e-3
    attack_images: int = 256
    name = "sfr"
    kind = "regeneration"

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction {self.fraction} must lie in (0, 1], e.g. 0.5")
        if not 0 < self.xi <= 1:
            raise ValueError(f"xi must be in (0, 255] in 0-255 units, got {self.xi * 255:g}")
        if self.uaps < 1 or self.epochs < 1:
            raise ValueError("uaps and epochs must be at least 1")
        UNIVERSAL_ATTACKS.get(self.attack).check(xi=self.xi)  # an unknown attack fails now

    @property
    def surface(self) -> Surface:
        return Surface("differentiable")

    def resolve_layers(self, base: nn.Module) -> list[str]:
        layers = auto_layers(base) if self.layers == ("auto",) else list(self.layers)
        known = set(conv_layers(base))
        for name in layers:
            if name not in known:
                raise RobustlabError(
                    f"regenerate layer {name!r} is not a Conv2d of the model; try one of "
                    f"{', '.join(conv_layers(base)[:8])}"
                )
        return layers

    def prepare(self, base: nn.Module, directory: Path, context: PrepareContext) -> None:
        layers = self.resolve_layers(base)  # before any expensive work
        data = sample(context.train, self.train_limit, context.seed)
        pixels, _ = data.tensors(context.device)
        weights = _digest(t.cpu().numpy().tobytes() for t in base.state_dict().values())
        perturbations = []
        for k in range(self.uaps):  # each from its own seeded subset of the training images
            pick = torch.randperm(
                len(pixels), generator=torch.Generator().manual_seed(derive_seed(context.seed, k))
            )[: self.attack_images]
            images = pixels[pick.to(context.device)]
            params: Params = {"xi": self.xi, "seed": derive_seed(context.seed, "uap", k)}
            # named by the images and the base weights too: an interrupted `sfr train` re-run
            # with other --attack-images, --train-limit or another run computes them anew
            inputs = _digest([images.cpu().numpy().tobytes(), weights.encode()])
            found = universal_perturbation(
                directory / "perturbations" / f"train-{k}-{inputs}.safetensors",
                base,
                self.attack,
                images,
                params,
            )
            perturbations.append(found.delta.to(context.device))
        # the units train in NCHW, whatever the base's layout (models.base.channels_last_pays)
        defended = place(
            add_regeneration(base, layers, self.fraction), context.device, channels_last=False
        )
        history = train_frus(
            defended,
            data,
            perturbations,
            self.xi,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=context.seed,
            device=context.device,
            quiet=context.quiet,
        )
        save_tensors(directory / "fru.safetensors", fru_state(defended.eval()))
        write_json(
            directory / DONE_FILE, {**self.describe(), "chosen_layers": layers, "history": history}
        )

    def wrap(self, base: nn.Module, directory: Path) -> Defended:
        done = directory / DONE_FILE  # (SFR directories from before the Defense have none)
        layers = read_json(done)["chosen_layers"] if done.is_file() else self.resolve_layers(base)
        defended = add_regeneration(base, layers, self.fraction).to(model_device(base))
        fru, _ = load_tensors(directory / "fru.safetensors")
        missing = set(fru_state(defended)) - set(fru)
        if missing:
            raise RobustlabError(f"{directory}/fru.safetensors lacks {sorted(missing)[0]}; retrain")
        check_weights(fru, defended, directory / "fru.safetensors")
        defended.load_state_dict({**defended.state_dict(), **fru})
        return Defended(defended, self.surface)

"""The adaptive white-box protocol: attack the whole defended model, then check the attack.

The attack differentiates :func:`~robustlab.defenses.base.attack_view` of the model: exact
gradients where the defense is differentiable, BPDA where it declares a part that is not,
EOT where it is randomized. Its adversarials are scored on the real defended model.

Gradient masking (Athalye et al. 2018; Carlini et al. 2019, "On evaluating adversarial
robustness") shows in the attack itself, so every record carries sanity checks:

- ``zero_gradient_share``: examples whose input gradient (through the attack view) is all
  zero: the attack has nothing to follow;
- ``loss_rises``: the mean cross-entropy of the defended model is higher on the adversarials
  than on the clean images;
- black-box attacks beating the white-box one: the same attack made on the undefended base
  model and transferred (``transfer_accuracy``), or random ±ε sign noise
  (``noise_accuracy``), leaves *fewer* images correctly classified;
- ``randomized``: two forward passes disagree; ``near_chance``: clean accuracy below 1.5×
  chance.
Any of the first three raises ``masking``: the robust accuracy is then an upper bound only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import TypedDict

from robustlab.attacks.adversarial_set import attack_in_batches
from robustlab.attacks.base import Params
from robustlab.defenses.base import attack_view, surface_of
from robustlab.evaluation.stats import Rate, RateRecord
from robustlab.models.base import frozen, model_device, predict

BATCH = 64


class GradientFields(TypedDict, closed=True):
    """:class:`GradientChecks` as records store them."""

    zero_gradient_share: float
    randomized: bool
    flags: list[str]


class AdaptiveFields(TypedDict, closed=True):
    """An :class:`AdaptiveResult` as records store it (closed: no key but these)."""

    zero_gradient_share: float
    randomized: bool
    flags: list[str]
    accuracy: RateRecord
    clean_accuracy: RateRecord
    transfer_accuracy: RateRecord | None
    noise_accuracy: RateRecord
    surface: str
    bpda_part: str
    loss_clean: float
    loss_adversarial: float
    loss_rises: bool
    near_chance: bool
    masking: bool


@dataclass(frozen=True)
class AdaptiveResult:
    """One model under one adaptive attack, with the sanity checks (module docstring)."""

    accuracy: Rate
    clean_accuracy: Rate
    surface: str
    bpda_part: str
    zero_gradient_share: float
    loss_clean: float
    loss_adversarial: float
    transfer_accuracy: Rate | None
    noise_accuracy: Rate
    randomized: bool
    near_chance: bool
    flags: list[str] = field(default_factory=list)

    @property
    def loss_rises(self) -> bool:
        return self.loss_adversarial > self.loss_clean

    @property
    def masking(self) -> bool:
        return bool(
            {"zero_gradients", "loss_not_rising", "black_box_beats_white_box"} & set(self.flags)
        )

    def to_dict(self) -> AdaptiveFields:
        transfer = self.transfer_accuracy
        return {
            "accuracy": self.accuracy.to_dict(),
            "clean_accuracy": self.clean_accuracy.to_dict(),
            "transfer_accuracy": transfer.to_dict() if transfer is not None else None,
            "noise_accuracy": self.noise_accuracy.to_dict(),
            "surface": self.surface,
            "bpda_part": self.bpda_part,
            "zero_gradient_share": self.zero_gradient_share,
            "loss_clean": self.loss_clean,
            "loss_adversarial": self.loss_adversarial,
            "loss_rises": self.loss_rises,
            "randomized": self.randomized,
            "near_chance": self.near_chance,
            "flags": list(self.flags),
            "masking": self.masking,
        }


def adaptive_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: str,
    params: Params,
    *,
    base: nn.Module | None = None,
    seed: int = 0,
) -> AdaptiveResult:
    """Attack ``model`` through its attack view; score and sanity-check the result.

    ``base``: the undefended model, whose adversarials are transferred as a black-box check
    (None for an undefended model).
    """
    view = attack_view(model)
    adv = attack_in_batches(attack, view, dict(params), x, y, seed=seed, batch_size=BATCH).adv
    labels = y.cpu()
    # one pass each over the clean and the adversarial images gives predictions and losses
    clean_logits, adv_logits = logits_of(model, x), logits_of(model, adv)
    accuracy = Rate(int((adv_logits.argmax(1) == labels).sum()), len(y))
    clean_pred = clean_logits.argmax(1)
    clean = Rate(int((clean_pred == labels).sum()), len(y))
    transfer = None
    if base is not None and base is not model:
        moved = attack_in_batches(attack, base, dict(params), x, y, seed=seed, batch_size=BATCH)
        transfer = Rate(int((predict(model, moved.adv) == labels).sum()), len(y))
    noise = Rate(int((predict(model, sign_noise(x, params, seed)) == labels).sum()), len(y))
    zero = zero_gradient_share(view, x, y)
    loss_clean, loss_adv = mean_loss(clean_logits, labels), mean_loss(adv_logits, labels)
    randomized = not torch.equal(clean_pred, predict(model, x))  # a second pass, on purpose
    near_chance = clean.value < 1.5 / max(1, clean_logits.shape[1])
    flags = []
    if zero > 0.5:
        flags.append("zero_gradients")
    if loss_adv <= loss_clean:
        flags.append("loss_not_rising")
    if min(r.hits for r in (transfer, noise) if r is not None) < accuracy.hits:
        flags.append("black_box_beats_white_box")
    if randomized:
        flags.append("random_predictions")
    if near_chance:
        flags.append("near_chance")
    surface = surface_of(model)
    return AdaptiveResult(
        accuracy=accuracy,
        clean_accuracy=clean,
        surface=surface.kind,
        bpda_part=surface.part,
        zero_gradient_share=zero,
        loss_clean=loss_clean,
        loss_adversarial=loss_adv,
        transfer_accuracy=transfer,
        noise_accuracy=noise,
        randomized=randomized,
        near_chance=near_chance,
        flags=flags,
    )


@dataclass(frozen=True)
class GradientChecks:
    """AutoAttack's checks of a white-box evaluation: the share of correctly classified images
    whose input gradient is all zero, and predictions that change between two passes."""

    zero_gradient_share: float
    randomized: bool

    @property
    def flags(self) -> list[str]:
        return ["zero_gradients"] * (self.zero_gradient_share > 0) + [
            "random_predictions"
        ] * self.randomized

    def to_dict(self) -> GradientFields:
        return {
            "zero_gradient_share": self.zero_gradient_share,
            "randomized": self.randomized,
            "flags": self.flags,
        }


def gradient_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    differentiated: nn.Module | None = None,
    clean_pred: torch.Tensor | None = None,
) -> GradientChecks:
    """:class:`GradientChecks` of ``model`` on ``x``; the gradients are those of
    ``differentiated`` (what the attack differentiates; default the model itself).
    ``clean_pred``: the model's predictions on ``x`` if already known (the first pass)."""
    first = clean_pred if clean_pred is not None else predict(model, x)
    right = first == y.cpu()
    view = differentiated if differentiated is not None else model
    zero = zero_gradient_share(view, x[right], y[right]) if right.any() else 0.0
    return GradientChecks(zero, not torch.equal(first, predict(model, x)))


def sign_noise(x: torch.Tensor, params: Params, seed: int) -> torch.Tensor:
    """x ± ε per pixel with random signs (ε of the attack): the black-box floor of ℓ∞ attacks."""
    eps = float(params.get("eps", 8 / 255))
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, x.shape, generator=generator).to(x) * 2 - 1
    return (x + eps * signs).clamp(0, 1)


def zero_gradient_share(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of examples whose cross-entropy gradient with respect to the input is all zero."""
    zero, device = 0, model_device(model)
    with frozen(model):
        for i in range(0, len(x), BATCH):
            xb = x[i : i + BATCH].to(device).detach().requires_grad_(True)
            loss = F.cross_entropy(model(xb), y[i : i + BATCH].to(device), reduction="sum")
            (grad,) = torch.autograd.grad(loss, xb)
            zero += int((grad.flatten(1).abs().amax(1) == 0).sum())
    return zero / max(1, len(x))


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` in eval mode, batched, on the CPU."""
    device = model_device(model)
    with frozen(model):
        parts = [model(x[i : i + BATCH].to(device)).cpu() for i in range(0, len(x), BATCH)]
    return torch.cat(parts) if parts else torch.empty(0, 0)


def mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy of logits against labels (0 for no examples)."""
    return float(F.cross_entropy(logits, labels)) if len(labels) else 0.0

"""The binarization test of Zimmermann et al. (NeurIPS 2022, "Increasing Confidence in
Adversarial Robustness Evaluations"; reference code google-research/active-adversarial-tests).

For an image x, sample *inner* points uniformly in the ball of radius 0.95 ε and one
*boundary* point on its rim (a random corner for ℓ∞, a random direction of length ε for ℓ2),
and fit a linear readout on the model's *features* (the input of its last ``nn.Linear``, as
the reference replaces the last layer; the logits if it has none) that labels x and the
inner points 0 and the boundary point 1. Fewer points than feature dimensions are used, so
the readout can separate them (the reference's condition). Where it does, the binary
classifier "readout ∘ model" *provably* has an adversarial within ε (the boundary point).
Images where fresh random points of the ball are adversarial too are left out: a random
start would pass there, and the test would say nothing. An attack that works must follow
the gradient to the boundary point's side; the test's score is the share of valid images it
breaks, and below ``threshold`` the attack is failing on this model.

The readout is fitted per image (logistic regression, float64, class-balanced), and each
image is attacked alone, since each has its own readout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.apgd import APGD
from robustlab.evaluation.checks import Check, metered
from robustlab.models.base import frozen, model_device

ZIMMERMANN = "Zimmermann et al. 2022, Increasing Confidence in Adversarial Robustness Evaluations"


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The model's last ``nn.Linear`` (in definition order): its input are the features."""
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found = module
    return found


def features_of(model: nn.Module, layer: nn.Linear | None, x: torch.Tensor) -> torch.Tensor:
    """The input of ``layer`` when ``model`` runs on ``x`` (the output if ``layer`` is None)."""
    captured: list[torch.Tensor] = []
    handle = None
    if layer is not None:
        handle = layer.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    try:
        out: torch.Tensor = model(x)
    finally:
        if handle is not None:
            handle.remove()
    return captured[-1].flatten(1) if captured else out


class Readout(nn.Module):
    """``model``'s features through a binary linear readout: the logits (0, w·(f − μ) + b)
    of the classes "inner" and "boundary"."""

    w: torch.Tensor
    mean: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Linear | None,
        w: torch.Tensor,
        b: float,
        mean: torch.Tensor,
    ) -> None:
        super().__init__()
        self.model, self.b = model, b
        self._layer = [layer]  # the model's own layer, hooked at call time (not a submodule)
        self.register_buffer("w", w.float())
        self.register_buffer("mean", mean.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = features_of(self.model, self._layer[0], x)
        score = (f - self.mean.to(f)) @ self.w.to(f) + self.b
        return torch.stack([torch.zeros_like(score), score], 1)


def _points(
    x: torch.Tensor, radius: float, norm: str, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` points uniform in the ball of ``radius``, and one on its rim."""
    shape = (count + 1, *x.shape)
    u = torch.rand(shape, generator=generator, dtype=x.dtype) * 2 - 1
    v = torch.randn(shape, generator=generator, dtype=x.dtype)
    if norm == "linf":
        inside, rim = radius * u, radius * v.sign()
    else:
        unit = v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * x.ndim))
        # uniform in the ball: the radius of a d-dimensional ball goes as U^(1/d)
        scale = torch.rand(count + 1, generator=generator, dtype=x.dtype) ** (1 / x.numel())
        inside, rim = radius * scale.view(-1, *([1] * x.ndim)) * unit, radius * unit
    return (x + inside[:count]).clamp(0, 1), (x + rim[count:]).clamp(0, 1)


def _fit(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Class-balanced logistic regression on standardised features: (w/σ, b, μ)."""
    f = features.double()
    mean, std = f.mean(0), f.std(0).clamp_min(1e-8)
    z = (f - mean) / std
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    weight = torch.where(labels == 1, 0.5 / labels.sum(), 0.5 / (1 - labels).sum()).double()
    optimizer = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (weight * F.softplus(-(2 * labels - 1) * (z @ w + b))).sum()
        (loss + 1e-4 * (w**2).sum()).backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    return (w / std).detach(), float(b.detach()), mean


@metered
def binarization_test(
    model: nn.Module,
    view: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    points: int = 64,
    threshold: float = 0.95,
    seed: int = 0,
) -> Check:
    """The test on images ``x`` (module docstring): the readout is fitted on ``model``'s
    features; APGD-CE attacks "readout ∘ view" (the attacker's surface, which shares the
    model's last layer) and its adversarials are scored on "readout ∘ model"."""
    generator = torch.Generator().manual_seed(seed)
    valid = broken = 0
    device = model_device(model)
    layer = last_linear(model)
    with torch.no_grad(), frozen(model):
        dimension = features_of(model, layer, x[:1].to(device)).shape[1]
    count = max(1, min(points, dimension - 3))  # fewer points than features
    for image in x:
        inner, rim = _points(image, 0.95 * eps, norm, count, generator)
        held_out, _ = _points(image, eps, norm, points, generator)
        with torch.no_grad(), frozen(model):
            batch = torch.cat([image[None], inner, rim, held_out]).to(device)
            features = features_of(model, layer, batch).cpu()
        k = 1 + count
        labels = torch.cat([torch.zeros(k), torch.ones(1)]).double()
        w, b, mean = _fit(features[: k + 1], labels)
        scores = (features.double() - mean) @ w + b
        if (scores[:k] >= 0).any() or scores[k] <= 0 or (scores[k + 1 :] >= 0).any():
            continue  # no provable adversarial, or a random point finds it: not a test
        valid += 1
        # in eval mode: an attack restores a module's mode after the call, and a readout in
        # training mode would hand that mode down to the evaluated model (its BatchNorm)
        real = Readout(model, layer, w, b, mean).to(device).eval()
        attacked = Readout(view, layer, w, b, mean).to(device).eval()
        target = image[None].to(device)
        adv = APGD(attacked, eps=eps, steps=steps, norm=norm, seed=seed)(  # type: ignore[arg-type]
            target, torch.zeros(1, dtype=torch.long, device=device)
        )
        with torch.no_grad(), frozen(model):
            broken += int(real(adv).argmax(1).item() == 1)
    rate = broken / valid if valid else math.nan
    return Check(
        "binarization",
        not valid or rate >= threshold,
        {"valid_images": valid, "broken": broken, "success_rate": rate if valid else -1.0},
        ZIMMERMANN,
        "the attack misses adversarials that exist: more steps and restarts, another loss, "
        "or a better gradient path",
    )

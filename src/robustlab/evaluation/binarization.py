"""The binarization test of Zimmermann et al. (NeurIPS 2022, "Increasing Confidence in
Adversarial Robustness Evaluations").

For an image x, sample *inner* points of the ε-ball (half uniformly inside it, half on its
rim: random corners for ℓ∞, random directions of length ε for ℓ2) and one *boundary*
point on the rim, and fit a linear readout on the model's logits that labels x and the
inner points 0 and the boundary point 1. Where the fitted readout does so, the binary
classifier "readout ∘ model" *provably* has an adversarial within ε (the boundary point),
while random points of the ball, like the inner ones, are not adversarial: an attack must
follow the gradient to find it. An attack that works must then find one: the test's score
is the share of such images it breaks. Below ``threshold`` the attack is failing on this
model, and its robust accuracies there are loose.

The readout is fitted per image (logistic regression, float64, class-balanced), and each
image is attacked alone, since each has its own readout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.apgd import APGD
from robustlab.evaluation.adaptive import logits_of
from robustlab.evaluation.checks import Check
from robustlab.models.base import model_device

ZIMMERMANN = "Zimmermann et al. 2022, Increasing Confidence in Adversarial Robustness Evaluations"


class Readout(nn.Module):
    """``model`` followed by a binary linear readout of its standardised logits: the logits
    (0, w·(z − μ)/σ + b) of the classes "inner" and "boundary"."""

    def __init__(self, model: nn.Module, w: torch.Tensor, b: float, mean: torch.Tensor) -> None:
        super().__init__()
        self.model, self.b = model, b
        self.register_buffer("w", w.float())
        self.register_buffer("mean", mean.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        score = (z - self.mean.to(z)) @ self.w.to(z) + self.b
        return torch.stack([torch.zeros_like(score), score], 1)


def _points(
    x: torch.Tensor, eps: float, norm: str, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` inner points (half inside the ball, half on its rim) and one boundary point."""
    shape = (count + 1, *x.shape)
    u = torch.rand(shape, generator=generator, dtype=x.dtype) * 2 - 1
    v = torch.randn(shape, generator=generator, dtype=x.dtype)
    if norm == "linf":
        inside, rim = eps * u, eps * v.sign()
    else:
        unit = v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * x.ndim))
        radius = torch.rand(count + 1, generator=generator, dtype=x.dtype)
        inside, rim = eps * radius.view(-1, *([1] * x.ndim)) * unit, eps * unit
    half = count // 2
    inner = torch.cat([inside[:half], rim[half:count]])
    return (x + inner).clamp(0, 1), (x + rim[count:]).clamp(0, 1)


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
    logits; APGD-CE attacks "readout ∘ view" (the attacker's surface) and its adversarials
    are scored on "readout ∘ model"."""
    generator = torch.Generator().manual_seed(seed)
    valid = broken = 0
    device = model_device(model)
    for image in x:
        inner, rim = _points(image, eps, norm, points, generator)
        held_out, _ = _points(image, eps, norm, points, generator)
        clean_and_inner = torch.cat([image[None], inner])
        features = logits_of(model, torch.cat([clean_and_inner, rim, held_out]))
        k = len(clean_and_inner)
        labels = torch.cat([torch.zeros(k), torch.ones(1)]).double()
        w, b, mean = _fit(features[: k + 1], labels)
        scores = (features.double() - mean) @ w + b
        # valid: the boundary point is adversarial, the inner points are not, and neither
        # are fresh random points of the ball (else a random start would find it)
        if (scores[:k] >= 0).any() or scores[k] <= 0 or (scores[k + 1 :] >= 0).any():
            continue  # no provable adversarial for this image: it does not take part
        valid += 1
        real = Readout(model, w, b, mean).to(device)
        attacked = Readout(view, w, b, mean).to(device)
        target = image[None].to(device)
        adv = APGD(attacked, eps=eps, steps=steps, norm=norm, seed=seed)(  # type: ignore[arg-type]
            target, torch.zeros(1, dtype=torch.long, device=device)
        )
        with torch.no_grad():
            broken += int(real(adv).argmax(1).item() == 1)
    rate = broken / valid if valid else math.nan
    return Check(
        "binarization",
        not valid or rate >= threshold,
        {"valid_images": valid, "broken": broken, "success_rate": rate if valid else -1.0},
        ZIMMERMANN,
        "the attack misses adversarials that exist: more steps and restarts, another loss, "
        "or a better gradient path",
        forwards=len(x) * (2 * points + 2) + valid * (steps + 2),
        backwards=valid * (steps + 1),
    )

"""Fast Adaptive Boundary attack (FAB; Croce & Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", ICML), AutoAttack's third attack as FAB-T.

FAB looks for the *smallest* perturbation that changes the decision. At the iterate x_k,
with g = z_y − z_t the logit gap to a class t and w = ∇g, the decision boundary is
linearised as the hyperplane H = {z : g(x_k) + w·(z − x_k) = 0}. Let P(p) be the
minimal-ℓp step that takes p onto H inside the box [0, 1]; then

    d₁ = P(x_k) (from the iterate),   d₂ = P(x₀) (from the original image)
    α  = min(‖d₁‖ / (‖d₁‖ + ‖d₂‖), α_max)
    x_{k+1} = clip((1 − α)(x_k + η d₁) + α (x₀ + η d₂), 0, 1)       η = 1.05 (overshoot)

so the iterate moves to the boundary while staying close to x₀. Once x_{k+1} is
adversarial it is kept if it is the closest so far, and pulled back toward x₀ by
x₀ + β (x_{k+1} − x₀) (β = 0.9). Untargeted FAB takes t per step as the class of the
nearest linearised boundary, argmin_t |g_t| / ‖w_t‖_q (q dual to p: one backward pass per
class); FAB-T (``targeted=True``) runs once toward each of the ``target_classes``
runner-up classes of the clean image (one backward pass per step). Restarts after the
first start uniformly in the ℓp ball of half the best radius found (ε if none).

As an ε-bounded attack (how AutoAttack uses it) an adversarial counts only if its
distance is at most ``eps``; images with none keep the clean image. Success is
untargeted (any wrong class), as in AutoAttack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from robustlab.attacks.base import (
    ATTACKS,
    Attack,
    AttackResult,
    check_radius,
    check_range,
    check_steps,
    per_example_norm,
    rows,
)
from robustlab.seeding import derive_seed

# the projections solve a monotone scalar equation by bisection: 40 halvings reach 1e-12
# of the bracket, below float32 resolution of any pixel step
_HALVINGS = 40


@ATTACKS.register()
class FAB(Attack):
    """FAB with ``steps`` steps per run; an adversarial counts within ``eps`` only.

    Parameters
    ----------
    model : nn.Module
        Classifier taking pixels in [0, 1].
    eps : float
        Radius in pixel units ([0, 1] for ℓ∞; ℓ2 radii may exceed 1).
    steps : int
        Iterations per run (AutoAttack uses 100).
    norm : {"linf", "l2"}
    targeted : bool
        FAB-T: one run toward each of the ``target_classes`` runner-up classes.
    target_classes : int
        Targets of FAB-T (AutoAttack uses 9; at most classes − 1).
    restarts : int
        Runs per target (untargeted: in all); the first starts at the image itself.
    alpha_max, eta, beta : float
        Bias toward the original image, overshoot and pull-back (the paper's 0.1, 1.05, 0.9).
    seed : int
        Seeds the random restarts.

    Example
    -------
    >>> attack = FAB(model, eps=8 / 255, steps=100, targeted=True, target_classes=9)
    >>> adv = attack(images, labels)
    """

    name = "fab"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        steps: int = 100,
        norm: Literal["linf", "l2"] = "linf",
        *,
        targeted: bool = False,
        target_classes: int = 9,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        seed: int = 0,
    ) -> None:
        super().__init__(model, seed=seed)
        self.eps, self.norm = check_radius(eps, norm), norm
        self.steps = check_steps("steps", steps)
        self.targeted = bool(targeted)
        self.target_classes = check_steps("target_classes", target_classes)
        self.restarts = check_steps("restarts", restarts)
        self.alpha_max = check_range("alpha_max", alpha_max, 0.0, 1.0)
        self.eta = check_range("eta", eta, 1.0, 2.0)
        self.beta = check_range("beta", beta, 0.0, 1.0)

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> AttackResult:
        if target is not None:
            raise ValueError("fab chooses its own targets (targeted=True: the runner-ups)")
        with torch.no_grad():
            logits = self.model(x)
        classes = logits.shape[1]
        if self.targeted and self.target_classes > classes - 1:
            raise ValueError(
                f"fab: target_classes={self.target_classes} but the model has only "
                f"{classes - 1} other classes; use at most {classes - 1}"
            )
        best = torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype)
        best[logits.argmax(1) != y] = 0.0  # already misclassified: the image itself
        adv = x.clone()
        ranked = logits.argsort(dim=1, descending=True)
        goals = range(1, self.target_classes + 1) if self.targeted else [0]
        seed = generator.initial_seed()
        for rank in goals:
            for restart in range(self.restarts):
                todo = (best > self.eps).nonzero().squeeze(1)
                if len(todo) == 0:
                    return AttackResult(adv)
                goal = ranked[todo, rank] if self.targeted else None
                start = self._start(x, best, seed, rank, restart)[todo]
                found, norms = self._single_run(x[todo], y[todo], goal, start)
                closer = norms < best[todo]
                best[todo[closer]] = norms[closer]
                adv[todo[closer]] = found[closer]
        # an ε-bounded attack: farther adversarials do not count
        return AttackResult(torch.where(rows(best <= self.eps, x), adv, x))

    def _start(
        self, x: torch.Tensor, best: torch.Tensor, seed: int, rank: int, restart: int
    ) -> torch.Tensor:
        """The image itself on the first run; else uniform in the ball of half the best radius
        (ε if none). Drawn for the whole batch, so an example's start depends on its position
        only (a prefix of the batch is attacked as in the whole batch)."""
        if restart == 0:
            return x.clone()
        noise_gen = torch.Generator().manual_seed(derive_seed(seed, self.name, rank, restart))
        radius = best.clamp(max=self.eps).view(-1, *([1] * (x.ndim - 1))) / 2
        t = torch.rand(x.shape, generator=noise_gen, dtype=x.dtype).to(x.device) * 2 - 1
        scale = per_example_norm(t, float("inf") if self.norm == "linf" else 2).clamp_min(1e-12)
        return (x + radius * t / scale).clamp(0, 1)

    def _single_run(
        self, x: torch.Tensor, y: torch.Tensor, goal: torch.Tensor | None, start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One run from ``start``: the closest adversarial found per example and its distance
        (inf where none)."""
        p = float("inf") if self.norm == "linf" else 2.0
        found, norms = (
            x.clone(),
            torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype),
        )
        current = start
        for _ in range(self.steps):
            gap, w = self._boundary(current, y, goal)
            d1 = self._project(current, w, -gap)
            d2 = self._project(x, w, -(gap + (w * (x - current)).flatten(1).sum(1)))
            n1, n2 = per_example_norm(d1, p), per_example_norm(d2, p)
            alpha = (n1 / (n1 + n2 + 1e-12)).clamp(0, self.alpha_max)
            current = ((1 - alpha) * (current + self.eta * d1) + alpha * (x + self.eta * d2)).clamp(
                0, 1
            )
            with torch.no_grad():
                hit = self.model(current).argmax(1) != y
            dist = per_example_norm(current - x, p).flatten()
            closer = hit & (dist < norms)
            found = torch.where(rows(closer, x), current, found)
            norms = torch.where(closer, dist, norms)
            current = torch.where(rows(hit, x), x + self.beta * (current - x), current)
        return found, norms

    def _boundary(
        self, z: torch.Tensor, y: torch.Tensor, goal: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """At ``z``: the logit gap g = z_y − z_t to the chosen class t and its input gradient w.
        Untargeted: t of the nearest linearised boundary."""
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(z)
            own = logits.gather(1, y[:, None]).squeeze(1)
            if goal is not None:
                gap = own - logits.gather(1, goal[:, None]).squeeze(1)
                (w,) = torch.autograd.grad(gap.sum(), z)
                return gap.detach(), w
            gaps, grads = [], []
            for t in range(logits.shape[1]):  # the Jacobian, one class at a time
                g = own - logits[:, t]
                (w,) = torch.autograd.grad(g.sum(), z, retain_graph=t < logits.shape[1] - 1)
                gaps.append(g.detach())
                grads.append(w)
        gap_all, w_all = torch.stack(gaps, 1), torch.stack(grads, 1)
        q = 1.0 if self.norm == "linf" else 2.0
        distance = gap_all.abs() / (w_all.flatten(2).norm(p=q, dim=2) + 1e-12)
        distance.scatter_(1, y[:, None], float("inf"))  # never the true class itself
        t = distance.argmin(1)
        index = torch.arange(len(z), device=z.device)
        return gap_all[index, t], w_all[index, t]

    def _project(self, p: torch.Tensor, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The minimal-norm step d with w·d = c and p + d in [0, 1] (per example); where no
        step in the box reaches the hyperplane, the one that gets closest."""
        sign = torch.where(c >= 0, 1.0, -1.0).to(p.dtype).view(-1, *([1] * (p.ndim - 1)))
        low, high = -p, 1 - p
        need = c.abs()
        # d(t) = clip(t · s · v, box) is monotone in t: v = sign(w) for ℓ∞ (t = ‖d‖∞), v = w for
        # ℓ2 (the KKT form of the box-constrained minimal-ℓ2 problem)
        direction = sign * (w.sign() if self.norm == "linf" else w)

        def step(t: torch.Tensor) -> torch.Tensor:
            return torch.maximum(torch.minimum(t * direction, high), low)

        lo = torch.zeros_like(need)
        if self.norm == "linf":
            hi = torch.ones_like(need)  # a step of 1 spans the whole box
        else:
            hi = need / (w.flatten(1).norm(dim=1) ** 2 + 1e-12)  # exact without the box
            for _ in range(64):  # grow the bracket until it reaches the hyperplane (or saturates)
                short = _reach(step, hi, w, sign) < need
                if not short.any():
                    break
                hi = torch.where(short, hi * 2, hi)
        for _ in range(_HALVINGS):
            mid = (lo + hi) / 2
            short = _reach(step, mid, w, sign) < need
            lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
        return step(hi.view(-1, *([1] * (p.ndim - 1))))


def _reach(
    step: Callable[[torch.Tensor], torch.Tensor],
    t: torch.Tensor,
    w: torch.Tensor,
    sign: torch.Tensor,
) -> torch.Tensor:
    """s·w·d(t) per example: how far the step of size ``t`` moves along the normal."""
    d = step(t.view(-1, *([1] * (w.ndim - 1))))
    moved: torch.Tensor = (sign * w * d).flatten(1).sum(1)
    return moved

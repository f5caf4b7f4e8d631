"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML; reference code fra31/auto-attack).

PGD whose only budget is the number of steps N. With Π the projection onto the ε-ball
around x intersected with [0, 1] and g the gradient of the loss L:

    z_{k+1} = Π(x_k + η_k · s(g_k))              s = sign (ℓ∞) or g/‖g‖₂ (ℓ2)
    x_{k+1} = Π(x_k + α(z_{k+1} − x_k) + (1 − α)(x_k − x_{k−1}))     α = 0.75 (1 at k = 0)

The step size starts at η₀ = 2ε and is halved, per example, at checkpoints when

1. at most ρ = 0.75 of the steps since the last checkpoint raised the loss, or
2. the step was not halved at the last checkpoint and the best loss has not improved since;

a halved example restarts from its best point so far. The first checkpoint comes after
0.22·N steps; each interval is 0.03·N shorter than the last, down to 0.06·N (the reference
code's form of the paper's p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)).

Losses, with z the logits and π the classes sorted by decreasing logit:

- ``"ce"``: cross-entropy (to a target: −CE);
- ``"dlr"``: −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 10⁻¹²), invariant to shifts and
  scales of the logits, so a model cannot hide behind large or saturated logits;
  to a target t: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 10⁻¹²).

Only examples the model still gets right are attacked (``restarts`` times from random
points); an example already broken keeps its first adversarial. Unbroken examples get the
point of highest loss found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.base import (
    ATTACKS,
    Attack,
    AttackResult,
    check_choice,
    check_radius,
    check_range,
    check_steps,
    per_example_norm,
    project_l2,
    project_linf,
    rows,
)
from robustlab.models.base import frozen
from robustlab.seeding import derive_seed

Loss = Literal["ce", "dlr"]


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """The difference-of-logits-ratio loss of each example (module docstring)."""
    ordered = logits.sort(dim=1, descending=True).values
    own = logits.gather(1, y[:, None]).squeeze(1)
    if target is not None:
        goal = logits.gather(1, target[:, None]).squeeze(1)
        scale = ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2
        return -(own - goal) / (scale + 1e-12)
    # the best other class: the top logit unless it is the true one, then the second
    other = torch.where(ordered[:, 0] == own, ordered[:, 1], ordered[:, 0])
    return -(own - other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


@dataclass
class _Search:
    """Per-example state of one APGD run (all tensors have the batch as first dimension)."""

    adv: torch.Tensor  # current iterate x_k
    previous: torch.Tensor  # x_{k-1}
    grad: torch.Tensor
    loss: torch.Tensor
    best: torch.Tensor  # point of highest loss
    best_grad: torch.Tensor
    best_loss: torch.Tensor
    found: torch.Tensor  # first adversarial found (valid where ``success``)
    success: torch.Tensor
    step: torch.Tensor  # η per example, shaped to broadcast
    history: list[torch.Tensor] = field(default_factory=list)  # best loss after each step


@ATTACKS.register()
class APGD(Attack):
    """Auto-PGD with ``steps`` steps in the ``norm`` ball of radius ``eps``.

    Parameters
    ----------
    model : nn.Module
        Classifier taking pixels in [0, 1].
    eps : float
        Radius in pixel units ([0, 1] for ℓ∞; ℓ2 radii may exceed 1).
    steps : int
        Iterations per restart (AutoAttack uses 100).
    norm : {"linf", "l2"}
    loss : {"ce", "dlr"}
        Loss to maximise; with a ``target`` its targeted form.
    restarts : int
        Random restarts, each on the examples not yet broken.
    rho : float
        Share of loss increases below which a checkpoint halves the step.
    eot_samples : int
        Gradient samples averaged per step (EOT, Athalye et al. 2018) for randomized models.
    seed : int
        Seeds the random starting points.

    Example
    -------
    >>> attack = APGD(model, eps=8 / 255, steps=100, loss="dlr")
    >>> adv = attack(images, labels)
    """

    name = "apgd"
    traced = True

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        steps: int = 100,
        norm: Literal["linf", "l2"] = "linf",
        *,
        loss: Loss = "ce",
        restarts: int = 1,
        rho: float = 0.75,
        eot_samples: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(model, seed=seed)
        self.eps, self.norm = check_radius(eps, norm), norm
        self.loss = check_choice("loss", loss, ("ce", "dlr"))
        self.steps = check_steps("steps", steps)
        self.restarts = check_steps("restarts", restarts)
        self.rho = check_range("rho", rho, 0.0, 1.0)
        self.eot_samples = check_steps("eot_samples", eot_samples)

    # -- the loop over restarts -------------------------------------------------------

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> AttackResult:
        adv = x.clone()
        with torch.no_grad():
            logits = self.model(x)
        needed = 4 if target is not None else 3
        if self.loss == "dlr" and logits.shape[1] < needed:
            raise ValueError(
                f"the dlr loss needs at least {needed} classes (the model has "
                f"{logits.shape[1]}); use loss='ce'"
            )
        broken = self._succeeded(logits, y, target)
        trace = self._empty_trace(x)
        seed = generator.initial_seed()  # the call's seed: it seeds every random start
        for restart in range(self.restarts):
            if not self._restart(x, y, target, adv, broken, seed, restart, trace=trace):
                break
        return AttackResult(adv, success=broken.clone(), trace=trace)

    def run_from(
        self, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, *, seed: int | None = None
    ) -> AttackResult:
        """One untargeted run started at ``start`` (projected into the ball) instead of a
        random point: a white-box attack started from a black-box attack's adversarials,
        the remedy of Carlini et al. 2019 when black-box attacks do better. Deterministic
        (``seed`` is accepted for the common call signature)."""
        del seed
        with frozen(self.model):
            self._check_inputs(x, y, None)
            x = x.detach()
            search = self._single_run(x, y, None, self._project(start.detach().to(x), x))
        adv = torch.where(rows(search.success, x), search.found, search.best).detach()
        return AttackResult(adv, success=search.success, trace=torch.stack(search.history, 1))

    def _empty_trace(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x), self.steps), float("nan"), device=x.device, dtype=x.dtype)

    def _restart(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        goals: torch.Tensor | None,
        adv: torch.Tensor,
        broken: torch.Tensor,
        seed: int,
        *draw: object,
        trace: torch.Tensor | None = None,
    ) -> bool:
        """One run from a random start (``seed`` and ``draw`` seed it) on the examples not yet
        broken, toward ``goals`` (per example; None: untargeted), updating ``adv`` and
        ``broken`` in place, and ``trace`` (the best loss per step) where it is still empty.
        False when no example was left to attack."""
        todo = (~broken).nonzero().squeeze(1)
        if len(todo) == 0:
            return False
        goal = None if goals is None else goals[todo]
        search = self._single_run(x[todo], y[todo], goal, self._start(x, seed, *draw)[todo])
        adv[todo] = torch.where(rows(search.success, x), search.found, search.best)
        broken[todo] = search.success
        if trace is not None and bool(trace.isnan().all()):
            trace[todo] = torch.stack(search.history, 1)
        return True

    def _succeeded(
        self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == target if target is not None else pred != y

    # -- one run ------------------------------------------------------------------------

    def _single_run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        start: torch.Tensor,
    ) -> _Search:
        loss, grad, success = self._evaluate(start, y, target)
        s = _Search(
            adv=start,
            previous=start,
            grad=grad,
            loss=loss,
            best=start.clone(),
            best_grad=grad.clone(),
            best_loss=loss.clone(),
            found=start.clone(),
            success=success,
            step=torch.full_like(x[:, :1, :1, :1], 2 * self.eps),
        )
        interval = max(int(0.22 * self.steps), 1)
        shrink, shortest = max(int(0.03 * self.steps), 1), max(int(0.06 * self.steps), 1)
        since_check, rises = 0, torch.zeros_like(loss)
        halved_last = torch.ones_like(success)
        best_at_check = s.best_loss.clone()
        for k in range(self.steps):
            last_loss = s.loss
            self._step(s, x, momentum=0.75 if k > 0 else 1.0)
            s.loss, s.grad, hit = self._evaluate(s.adv, y, target)
            s.found = torch.where(rows(hit, x), s.adv, s.found)
            s.success |= hit
            rises += (s.loss > last_loss).to(rises.dtype)
            improved = s.loss > s.best_loss
            s.best = torch.where(rows(improved, x), s.adv, s.best)
            s.best_grad = torch.where(rows(improved, x), s.grad, s.best_grad)
            s.best_loss = torch.where(improved, s.loss, s.best_loss)
            s.history.append(s.best_loss.detach())
            since_check += 1
            if since_check < interval:
                continue
            # the reference code counts "at most ρ" (≤) where the paper writes "<"
            halve = (rises <= self.rho * interval) | (~halved_last & (best_at_check >= s.best_loss))
            s.step = torch.where(rows(halve, x), s.step / 2, s.step)
            s.adv = torch.where(rows(halve, x), s.best, s.adv)
            s.grad = torch.where(rows(halve, x), s.best_grad, s.grad)
            halved_last, best_at_check = halve, s.best_loss.clone()
            since_check, rises = 0, torch.zeros_like(rises)
            interval = max(interval - shrink, shortest)
        return s

    def _start(self, x: torch.Tensor, seed: int, *draw: object) -> torch.Tensor:
        """A random point on the sphere of the norm (the reference code's start).

        The noise of the whole batch comes from a CPU generator seeded by the call's ``seed``
        and ``draw`` (restart, target rank), so an example's start depends on its position
        only: a prefix of the batch is attacked exactly as in the whole batch.
        """
        generator = torch.Generator().manual_seed(derive_seed(seed, self.name, *draw))
        if self.norm == "linf":
            t = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
            t = t / per_example_norm(t, float("inf"))
        else:
            t = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            t = t / (per_example_norm(t, 2) + 1e-12)
        return (x + self.eps * t.to(x.device)).clamp(0, 1)

    def _project(self, adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return project_linf(adv, x, self.eps)
        return project_l2(adv, x, self.eps)

    def _step(self, s: _Search, x: torch.Tensor, momentum: float) -> None:
        """One momentum step from ``s.adv`` (in place on ``s``)."""
        if self.norm == "linf":
            direction = s.grad.sign()
        else:
            direction = s.grad / (per_example_norm(s.grad, 2) + 1e-12)
        z = self._project(s.adv + s.step * direction, x)
        moved = s.adv + momentum * (z - s.adv) + (1 - momentum) * (s.adv - s.previous)
        s.previous, s.adv = s.adv, self._project(moved, x)

    def _evaluate(
        self, adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss per example, its input gradient (mean of ``eot_samples``) and success."""
        adv = adv.detach().requires_grad_(True)
        grad = torch.zeros_like(adv)
        loss = torch.zeros(len(adv), device=adv.device, dtype=adv.dtype)
        hit = torch.zeros(len(adv), dtype=torch.bool, device=adv.device)
        for _ in range(self.eot_samples):
            with torch.enable_grad():
                logits = self.model(adv)
                sample = self._loss(logits, y, target)
                (g,) = torch.autograd.grad(sample.sum(), adv)
            grad += g
            loss += sample.detach()
            hit |= self._succeeded(logits.detach(), y, target)
        return loss / self.eot_samples, grad / self.eot_samples, hit

    def _loss(
        self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        if self.loss == "dlr":
            return dlr_loss(logits, y, target)
        if target is not None:
            return -F.cross_entropy(logits, target, reduction="none")
        return F.cross_entropy(logits, y, reduction="none")

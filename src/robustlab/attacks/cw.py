"""Carlini-Wagner ℓ2 attack (Carlini & Wagner 2017).

In tanh space, x' = (tanh(w) + 1) / 2, minimise per example

    ‖x' − x‖₂² + c · max(Z(x')_y − max_{i≠y} Z(x')_i, −κ)        (untargeted)
    ‖x' − x‖₂² + c · max(max_{i≠t} Z(x')_i − Z(x')_t, −κ)        (targeted to t)

with Adam, for ``steps`` iterations at most, aborting once the loss of every example has
stopped decreasing. The constant c is found per example by binary search over
``search_steps`` rounds (×10 until a first success, then bisection). An example counts as
adversarial when its logit margin reaches κ, and the adversarial with the smallest
distortion over all rounds is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.base import ATTACKS, Attack, AttackResult, check_steps

_NO_UPPER = 1e10


@ATTACKS.register()
class CW(Attack):
    """CW-ℓ2 with confidence ``kappa``; ``c`` is the initial constant of the search."""

    name = "cw"

    def __init__(
        self,
        model: nn.Module,
        c: float = 1e-3,
        kappa: float = 0.0,
        steps: int = 1000,
        search_steps: int = 30,
        lr: float = 0.01,
        abort_early: bool = True,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(model, seed=seed)
        if c <= 0 or kappa < 0 or lr <= 0:
            raise ValueError(
                f"need c > 0, kappa >= 0 and lr > 0 (got c={c}, kappa={kappa}, lr={lr})"
            )
        self.c, self.kappa, self.lr = float(c), float(kappa), float(lr)
        self.steps = check_steps("steps", steps)
        self.search_steps = check_steps("search_steps", search_steps)
        self.abort_early = bool(abort_early)

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> AttackResult:
        n = len(x)
        labels = y if target is None else target
        const = torch.full((n,), self.c, device=x.device, dtype=x.dtype)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, _NO_UPPER)
        best_l2 = torch.full_like(const, float("inf"))
        best_adv = x.clone()
        # atanh of pixels at exactly 0 or 1 is infinite: shrink slightly into the open interval
        w_start = torch.atanh((2 * x - 1) * (1 - 1e-6))
        for _ in range(self.search_steps):
            succeeded = self._optimise(
                x, labels, target is not None, w_start, const, best_l2, best_adv
            )
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            const = torch.where(upper < _NO_UPPER, (lower + upper) / 2, const * 10)
        return AttackResult(best_adv)

    def _optimise(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        targeted: bool,
        w_start: torch.Tensor,
        const: torch.Tensor,
        best_l2: torch.Tensor,
        best_adv: torch.Tensor,
    ) -> torch.Tensor:
        """One round at fixed constants; updates ``best_l2``/``best_adv`` in place."""
        w = w_start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=self.lr)
        succeeded = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        previous = torch.full_like(const, float("inf"))
        check_every = max(self.steps // 10, 1)
        for step in range(self.steps):
            with torch.enable_grad():
                adv = (torch.tanh(w) + 1) / 2
                l2 = (adv - x).flatten(1).square().sum(1)
                margin = self._margin(self.model(adv), labels, targeted)
                loss = l2 + const * (self.kappa - margin).clamp(min=0)
                (w.grad,) = torch.autograd.grad(loss.sum(), w)
            optimizer.step()
            loss, margin, adv = loss.detach(), margin.detach(), adv.detach()
            with torch.no_grad():
                hit = margin >= self.kappa
                improved = hit & (l2 < best_l2)
                best_l2.copy_(torch.where(improved, l2, best_l2))
                best_adv[improved] = adv[improved]
                succeeded |= hit
                if self.abort_early and step % check_every == 0:
                    if (loss > previous * 0.9999).all():
                        break
                    previous = torch.minimum(previous, loss)
        return succeeded

    @staticmethod
    def _margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
        """How far the attack is past the decision boundary, in logits (≥ κ is a success)."""
        onehot = F.one_hot(labels, logits.shape[1]).to(torch.bool)
        own = logits[onehot]
        best_other = logits.masked_fill(onehot, float("-inf")).amax(1)
        return own - best_other if targeted else best_other - own

"""Square Attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search", ECCV).

A random search that needs only the model's scores: starting from vertical stripes of ±ε
(ℓ∞) or a grid of ±"eta" bumps on the ε-sphere (ℓ2), each iteration proposes a change
confined to a random s×s square and keeps it where it lowers the margin loss

    L(x') = z_y(x') − max_{i≠y} z_i(x')          (to a target t: max_{i≠t} z_i − z_t)

(or the cross-entropy), until the margin is ≤ 0 or the query budget is spent. The square's
side shrinks with the share p of pixels it covers: p = p_init, halved at queries 10, 50,
200, 500, 1000, 2000, 4000, 6000 and 8000 (rescaled to the budget, as in the reference
code fra31/auto-attack). ℓ∞ proposals set the square to ±2ε per channel before projection;
ℓ2 proposals move mass between two squares and keep ‖δ‖₂ = ε.

Every iteration's random draws come from a generator seeded by (seed, iteration) and drawn
for the whole batch, so an example's search does not depend on the examples after it. The
square's position is shared by the batch in one iteration (as in the reference code; each
example still sees independent, uniformly placed squares over the iterations).
"""

from __future__ import annotations

import math
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
)
from robustlab.seeding import derive_seed

_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@ATTACKS.register()
class Square(Attack):
    """Score-based Square Attack with ``queries`` model queries per example at most.

    Parameters
    ----------
    model : nn.Module
        Classifier taking pixels in [0, 1]; only its outputs are used.
    eps : float
        Radius in pixel units.
    queries : int
        Query budget per example, the clean image and the initial point included
        (AutoAttack uses 5000 search steps).
    norm : {"linf", "l2"}
    p_init : float
        Initial share of pixels a square covers (0.8 in AutoAttack).
    loss : {"margin", "ce"}
    seed : int

    ``run`` reports the queries spent on each example (1 for one already misclassified,
    which is returned unchanged).

    Example
    -------
    >>> attack = Square(model, eps=8 / 255, queries=5000)
    >>> result = attack.run(images, labels)
    >>> result.adv, result.queries
    """

    name = "square"
    gradient = False

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        queries: int = 5000,
        norm: Literal["linf", "l2"] = "linf",
        *,
        p_init: float = 0.8,
        loss: Literal["margin", "ce"] = "margin",
        seed: int = 0,
    ) -> None:
        super().__init__(model, seed=seed)
        self.eps, self.norm = check_radius(eps, norm), norm
        self.loss = check_choice("loss", loss, ("margin", "ce"))
        self.queries = check_steps("queries", queries)
        self.p_init = check_range("p_init", p_init, 1e-6, 1.0)

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> AttackResult:
        labels, targeted = (y, False) if target is None else (target, True)
        seed = generator.initial_seed()  # the call's seed: every iteration's draws come from it
        # one query on the clean images; those already misclassified are left as they are
        margin, loss = self._margin_and_loss(x, labels, targeted)
        queries = torch.ones(len(x), dtype=torch.long, device=x.device)
        best = x.clone()
        start = (margin > 0).nonzero().squeeze(1)
        if len(start) and self.queries > 1:
            best[start] = self._initial(x, self._draws(seed, 0))[start]
            margin[start], loss[start] = self._margin_and_loss(best[start], labels[start], targeted)
            queries[start] += 1
        for it in range(2, self.queries):
            active = (margin > 0).nonzero().squeeze(1)
            if len(active) == 0:
                break
            size = self._square_side(it - 2, x)  # search steps count from 0
            proposal = self._propose(
                x[active], best[active], size, self._draws(seed, it), rows=active, batch=len(x)
            )
            new_margin, new_loss = self._margin_and_loss(proposal, labels[active], targeted)
            # keep the proposal where it lowers the loss or already succeeds
            keep = (new_loss < loss[active]) | (new_margin <= 0)
            chosen = active[keep]
            best[chosen] = proposal[keep]
            loss[chosen], margin[chosen] = new_loss[keep], new_margin[keep]
            queries[active] += 1
        return AttackResult(best, queries)

    # -- scores -------------------------------------------------------------------------

    def _margin_and_loss(
        self, adv: torch.Tensor, labels: torch.Tensor, targeted: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Margin (≤ 0 is a success) and the loss to lower, per example."""
        with torch.no_grad():
            logits = self.model(adv)
        own = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
        margin = other - own if targeted else own - other
        if self.loss == "margin":
            return margin, margin
        ce = F.cross_entropy(logits, labels, reduction="none")
        return margin, ce if targeted else -ce

    # -- proposals ----------------------------------------------------------------------

    def _draws(self, seed: int, iteration: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(seed, self.name, iteration))

    def _square_side(self, step: int, x: torch.Tensor) -> int:
        """Side s of the square at search step ``step``: s² ≈ p · H·W (at least 1, 3 for ℓ2)."""
        it = int(step / self.queries * 10000)  # the schedule is defined for 10,000
        p = self.p_init / 2 ** sum(it > q for q in _P_HALVINGS)
        side = max(round(math.sqrt(p * x.shape[2] * x.shape[3])), 1)
        if self.norm == "l2":
            side = max(side, 3) | 1  # odd, at least 3, so the eta bump has a centre
        return min(side, x.shape[2], x.shape[3])

    def _initial(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.norm == "linf":  # vertical stripes of ±ε, one sign per column and channel
            signs = _signs((n, c, 1, w), generator).to(x)
            return (x + self.eps * signs).clamp(0, 1)
        side = max(h // 5, 1)
        delta = torch.zeros_like(x)
        offset_h, offset_w = (h - side * 5) // 2, (w - side * 5) // 2
        bump = eta(side).to(x)
        tiles = [
            (offset_h + i * side, offset_w + j * side)
            for i in range(h // side)
            for j in range(w // side)
            if 0 <= offset_h + i * side <= h - side and 0 <= offset_w + j * side <= w - side
        ]
        # all signs in one draw, example-major, so an example's signs depend on its position only
        signs = _signs((n, len(tiles), c, 1, 1), generator).to(x)
        for k, (top, left) in enumerate(tiles):
            delta[:, :, top : top + side, left : left + side] += bump * signs[:, k]
        return (x + _on_sphere(delta, self.eps)).clamp(0, 1)

    def _propose(
        self,
        x: torch.Tensor,
        best: torch.Tensor,
        side: int,
        generator: torch.Generator,
        *,
        rows: torch.Tensor,
        batch: int,
    ) -> torch.Tensor:
        """Candidates for the examples at batch positions ``rows`` (``x``, ``best``: theirs).

        Random signs are drawn for the whole batch (``batch`` rows) and then selected, so
        an example's draws depend on its position only.
        """
        n, (c, h, w) = batch, x.shape[1:]
        top, left = _corner(h, w, side, generator)
        window = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
        if self.norm == "linf":
            signs = _signs((n, c, 1, 1), generator)[rows.cpu()].to(x)
            proposal = best.clone()
            proposal[window] = proposal[window] + 2 * self.eps * signs
            return (x + (proposal - x).clamp(-self.eps, self.eps)).clamp(0, 1)
        return self._propose_l2(x, best, side, window, generator, rows=rows, batch=batch)

    def _propose_l2(
        self,
        x: torch.Tensor,
        best: torch.Tensor,
        side: int,
        window: tuple[slice, ...],
        generator: torch.Generator,
        *,
        rows: torch.Tensor,
        batch: int,
    ) -> torch.Tensor:
        """Move the perturbation's mass in a second square into the first, on the ε-sphere."""
        n, (c, h, w) = batch, x.shape[1:]
        top2, left2 = _corner(h, w, side, generator)
        window2 = (slice(None), slice(None), slice(top2, top2 + side), slice(left2, left2 + side))
        delta = best - x
        union = torch.zeros_like(x[:1])
        union[window] = union[window2] = 1
        image_norm = _norm(delta, (1, 2, 3))
        union_norm = _norm(delta * union, (1, 2, 3))
        old = delta[window]
        bump = eta(side, transpose=bool(torch.rand(1, generator=generator) > 0.5)).to(x)
        signs = _signs((n, c, 1, 1), generator)[rows.cpu()].to(x)
        new = bump * signs + old / (_norm(old, (2, 3)) + 1e-12)
        budget = ((self.eps**2 - image_norm**2).clamp_min(0) / c + union_norm**2).sqrt()
        delta = delta.clone()
        delta[window2] = 0
        delta[window] = new / (_norm(new, (2, 3)) + 1e-12) * budget
        return (x + _on_sphere(delta, self.eps)).clamp(0, 1)


def eta(side: int, transpose: bool = False) -> torch.Tensor:
    """The ℓ2 proposal's bump: two halves of opposite sign, each a stack of concentric
    rectangles weighted 1/(k+1)² (the paper's η), scaled to unit ℓ2 norm."""
    bump = torch.zeros(side, side, dtype=torch.float64)
    bump[: side // 2] = _rectangles(side // 2, side)
    bump[side // 2 :] = -_rectangles(side - side // 2, side)
    bump = bump / bump.square().sum().sqrt().clamp_min(1e-12)
    return bump.T.contiguous() if transpose else bump


def _rectangles(rows: int, cols: int) -> torch.Tensor:
    out = torch.zeros(rows, cols, dtype=torch.float64)
    if rows == 0:
        return out
    centre_r, centre_c = rows // 2, cols // 2
    for k in range(max(centre_r, centre_c) + 1):
        r0, c0 = max(centre_r - k, 0), max(centre_c - k, 0)
        out[r0 : min(centre_r - k + 2 * k + 1, rows), c0 : min(centre_c - k + 2 * k + 1, cols)] += (
            1.0 / (k + 1) ** 2
        )
    return out / out.square().sum().sqrt()


def _corner(h: int, w: int, side: int, generator: torch.Generator) -> tuple[int, int]:
    top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
    return top, left


def _signs(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).double() * 2 - 1


def _norm(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return t.square().sum(dim=dims, keepdim=True).sqrt()


def _on_sphere(delta: torch.Tensor, eps: float) -> torch.Tensor:
    return delta / (_norm(delta, (1, 2, 3)) + 1e-12) * eps

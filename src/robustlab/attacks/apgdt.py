"""Targeted Auto-PGD with the DLR loss (APGD-T; Croce & Hein 2020), AutoAttack's second attack.

For each of the ``target_classes`` most likely wrong classes of the clean image (by the
model's logits: the 2nd, 3rd, … highest), run APGD with the targeted DLR loss

    −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 10⁻¹²)

on the examples not yet broken. Success is untargeted (any wrong class), as in AutoAttack:
the targets only diversify the search.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from robustlab.attacks.apgd import APGD
from robustlab.attacks.base import ATTACKS, AttackResult, check_steps


@ATTACKS.register()
class APGDT(APGD):
    """APGD-DLR toward each of the ``target_classes`` runner-up classes in turn.

    Parameters are those of :class:`~robustlab.attacks.apgd.APGD` (the loss is always the
    targeted DLR) plus ``target_classes`` (AutoAttack uses 9; at most classes − 1, and the
    loss needs at least four classes).

    Example
    -------
    >>> attack = APGDT(model, eps=8 / 255, steps=100, target_classes=9)
    >>> adv = attack(images, labels)
    """

    name = "apgdt"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        steps: int = 100,
        norm: Literal["linf", "l2"] = "linf",
        *,
        target_classes: int = 9,
        restarts: int = 1,
        rho: float = 0.75,
        eot_samples: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(
            model,
            eps,
            steps,
            norm,
            loss="dlr",
            restarts=restarts,
            rho=rho,
            eot_samples=eot_samples,
            seed=seed,
        )
        self.target_classes = check_steps("target_classes", target_classes)

    def _run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> AttackResult:
        if target is not None:
            raise ValueError("apgdt chooses its own targets; use apgd with loss='dlr' for one")
        with torch.no_grad():
            logits = self.model(x)
        classes = logits.shape[1]
        if classes < 4 or self.target_classes > classes - 1:
            raise ValueError(
                f"apgdt needs at least 4 classes and target_classes <= {classes - 1} "
                f"(the model has {classes}; target_classes={self.target_classes})"
            )
        ranked = logits.argsort(dim=1, descending=True)
        adv = x.clone()
        broken = logits.argmax(1) != y
        trace = self._empty_trace(x)
        seed = generator.initial_seed()
        for rank in range(1, self.target_classes + 1):
            for restart in range(self.restarts):
                goals = ranked[:, rank]
                if not self._restart(x, y, goals, adv, broken, seed, rank, restart, trace=trace):
                    return AttackResult(adv, success=broken.clone(), trace=trace)
        return AttackResult(adv, success=broken.clone(), trace=trace)

    def _succeeded(
        self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        return logits.argmax(1) != y  # any wrong class counts, whatever the target

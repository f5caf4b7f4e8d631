"""UAP: universal adversarial perturbations (Moosavi-Dezfooli et al., 2017).

Passes over the images: for those not yet fooled by v, DeepFool finds the
minimal extra step that fools ``x + v``; v ← Proj_ξ(v + step). Stops when the
fooling rate on the images reaches 1 − δ or after ``max_passes``.

Batched: DeepFool runs on a batch of not-yet-fooled images at the same v, then
their steps are folded into v one after the other with a projection after each,
as the sequential algorithm would for images that are not fooled in between.
"""

from __future__ import annotations

import torch

from robustlab.attacks.universal.base import (
    UNIVERSAL_ATTACKS,
    Norm,
    UniversalAttack,
    apply,
    project,
    shuffled_batches,
)
from robustlab.attacks.universal.deepfool import deepfool
from robustlab.models.base import predict


@UNIVERSAL_ATTACKS.register()
class UAP(UniversalAttack):
    name = "uap"

    def __init__(
        self,
        model: torch.nn.Module,
        xi: float = 10 / 255,
        norm: Norm = "linf",
        delta: float = 0.2,
        max_passes: int = 10,
        overshoot: float = 0.02,
        max_iter: int = 50,
        batch_size: int = 32,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(model, xi, norm, seed=seed)
        if not 0 <= delta < 1:
            raise ValueError(f"delta must lie in [0, 1), got {delta}")
        self.delta, self.max_passes, self.overshoot = delta, max_passes, overshoot
        self.max_iter, self.batch_size = max_iter, batch_size

    def _generate(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        v = torch.zeros_like(images[0])
        clean = predict(self.model, images).to(images.device)
        for _ in range(self.max_passes):
            for batch in shuffled_batches(len(images), self.batch_size, generator, images.device):
                x = images[batch]
                fooled = predict(self.model, apply(x, v)).to(x.device) != clean[batch]
                if bool(fooled.all()):
                    continue
                steps = deepfool(self.model, apply(x[~fooled], v), self.overshoot, self.max_iter)
                for step in steps:
                    v = project(v + step, self.xi, self.norm)
            changed = predict(self.model, apply(images, v)).to(images.device) != clean
            if float(changed.float().mean()) >= 1 - self.delta:  # clean labels: computed once
                break
        return v

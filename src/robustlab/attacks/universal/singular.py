"""Singular Fool: universal perturbations from the (p, q)-singular vectors of a hidden layer's
Jacobian (Khrulkov & Oseledets 2018, "Art of singular vectors and universal adversarial
perturbations", CVPR).

Stack the Jacobians J_i = ∂f(x_i)/∂x of a hidden layer f at a batch of images into one
operator J and find

    v* = argmax_{‖v‖_p = 1} ‖J v‖_q

by the generalised power method (Boyd 1974), with ψ_r(z) = sign(z)|z|^{r−1} and p' the
conjugate of p (1/p + 1/p' = 1):

    v ← ψ_{p'}(Jᵀ ψ_q(J v)),   v ← v / ‖v‖_p.

For p = ∞ (ℓ∞ perturbations) ψ_{p'} = sign, so v is a sign pattern; the paper's q = 10
makes the layer's largest responses dominate. J v and Jᵀu are both exact: Jᵀu is one
backward pass, J v the derivative of Jᵀw with respect to w (the double-backward trick),
with the graph built once. The perturbation is ±ξ·v*, the sign that fools more of the
images. The layer defaults to the Conv2d one third of the way through the network (the
paper finds early layers best); the chosen name is recorded.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.universal.base import UNIVERSAL_ATTACKS, Norm, UniversalAttack, fooling_rate


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of the model's Conv2d modules, in definition order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@UNIVERSAL_ATTACKS.register()
class SingularFool(UniversalAttack):
    """ξ times the (∞ or 2, q)-singular vector of ``layer``'s Jacobian at the images."""

    name = "singular"

    def __init__(
        self,
        model: nn.Module,
        xi: float = 10 / 255,
        norm: Norm = "linf",
        layer: str = "auto",
        q: float = 10.0,
        iterations: int = 30,
        batch_size: int = 64,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(model, xi, norm, seed=seed)
        convs = conv_layer_names(model)
        if layer == "auto":
            if not convs:
                raise ValueError("singular: the model has no Conv2d layer; name one with layer=")
            layer = convs[len(convs) // 3]
        elif layer not in dict(model.named_modules()):
            raise ValueError(f"singular: no layer {layer!r} in the model; e.g. {convs[:3]}")
        if q <= 1 or iterations < 1 or batch_size < 1:
            raise ValueError("singular: need q > 1, iterations >= 1 and batch_size >= 1")
        self.layer, self.q = layer, float(q)
        self.iterations, self.batch_size = int(iterations), int(batch_size)

    def _generate(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        order = torch.randperm(len(images), generator=generator, device=images.device)
        x = images[order[: self.batch_size]].detach().requires_grad_(True)
        with torch.enable_grad():
            act = self._activation(x)
            w = torch.zeros_like(act, requires_grad=True)
            (jt_w,) = torch.autograd.grad(act, x, w, create_graph=True)  # Jᵀw, linear in w
        v = self._normalise(torch.randn(x.shape[1:], generator=generator, device=x.device))
        for _ in range(self.iterations):
            (jv,) = torch.autograd.grad(jt_w, w, v.expand_as(x), retain_graph=True)
            u = _psi(jv / jv.abs().amax().clamp_min(1e-30), self.q)  # scale-free: ψ is homogeneous
            (jt_u,) = torch.autograd.grad(act, x, u, retain_graph=True)
            v = self._normalise(jt_u.sum(0))
        delta = self.xi * v.detach()
        if fooling_rate(self.model, images, -delta) > fooling_rate(self.model, images, delta):
            delta = -delta
        return delta

    def _activation(self, x: torch.Tensor) -> torch.Tensor:
        found: list[torch.Tensor] = []
        module = dict(self.model.named_modules())[self.layer]
        hook = module.register_forward_hook(lambda _m, _i, out: found.append(out))
        try:
            self.model(x)
        finally:
            hook.remove()
        return found[0]

    def _normalise(self, s: torch.Tensor) -> torch.Tensor:
        """ψ_{p'} and the p-norm normalisation: sign for p = ∞, s/‖s‖₂ for p = 2."""
        if self.norm == "linf":
            return s.sign()
        unit: torch.Tensor = s / s.norm().clamp_min(1e-30)
        return unit


def _psi(z: torch.Tensor, r: float) -> torch.Tensor:
    out: torch.Tensor = z.sign() * z.abs().pow(r - 1)
    return out

r"""DeepFool (Moosavi-Dezfooli et al., 2016), batched: the smallest ℓ2 step across the
nearest linearised decision boundary, repeated until the label changes.

For the current point, with original label :math:`\ell` and candidate classes
:math:`k`: :math:`w_k = \nabla f_k - \nabla f_\ell`, :math:`g_k = f_k - f_\ell`; the step is
:math:`r = \frac{|g_{\hat k}| + 10^{-4}}{\|w_{\hat k}\|^2} w_{\hat k}` with
:math:`\hat k = \arg\min_k |g_k| / \|w_k\|`. The returned perturbation is
:math:`(1 + \text{overshoot}) \sum r`.
"""

from __future__ import annotations

import torch
from torch import nn


def deepfool(
    model: nn.Module,
    images: torch.Tensor,
    overshoot: float = 0.02,
    max_iter: int = 50,
    candidates: int = 10,
) -> torch.Tensor:
    """Minimal perturbations (B, C, H, W) that change each image's predicted class.

    The model must be frozen and in eval mode (the universal attacks' base does
    that). Images that keep their label after ``max_iter`` steps get the sum of
    the steps taken so far.
    """
    with torch.no_grad():
        logits = model(images)
    labels = logits.argmax(1)
    top = min(candidates, logits.shape[1])
    classes = logits.topk(top, dim=1).indices  # the original label first
    total = torch.zeros_like(images)
    for _ in range(max_iter):
        point = (images + (1 + overshoot) * total).requires_grad_(True)
        logits = model(point)
        active = logits.argmax(1) == labels
        if not bool(active.any()):
            break
        picked = logits.gather(1, classes)  # (B, top)
        grads = [
            torch.autograd.grad(picked[:, k].sum(), point, retain_graph=k < top - 1)[0]
            for k in range(top)
        ]
        w = torch.stack(grads[1:], 1) - grads[0].unsqueeze(1)  # (B, top-1, C, H, W)
        g = (picked[:, 1:] - picked[:, :1]).detach()
        w_norm = w.flatten(2).norm(dim=2) + 1e-8
        best = (g.abs() / w_norm).argmin(1)
        rows = torch.arange(len(images), device=images.device)
        w_best, g_best, n_best = w[rows, best], g[rows, best], w_norm[rows, best]
        step = ((g_best.abs() + 1e-4) / n_best**2).view(-1, 1, 1, 1) * w_best
        total = total + step * active.view(-1, 1, 1, 1)
    return (1 + overshoot) * total.detach()

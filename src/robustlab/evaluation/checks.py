"""Failure checks of a robustness evaluation, each a small function citing its source.

A robust accuracy is an upper bound; these checks say when the bound is loose because the
attack failed, not because the model is robust. Each returns a :class:`Check`: whether it
passed, its evidence (numbers a reader can verify), what it cost in forward and backward
passes, its source, and the remedy the literature prescribes when it fails.

Sources:

- **AutoAttack** (Croce & Hein 2020; its ``checks.py`` and ``flags_doc.md``): randomized
  predictions, probability outputs, zero gradients, Square beating the gradient attacks,
  test-time optimisation in the forward pass, the number of classes.
- **Pintor et al. 2022**, "Indicators of Attack Failure" (NeurIPS): unavailable gradients,
  unstable predictions, silent success, incomplete optimisation, transfer failure,
  unconstrained-attack failure.
- **Carlini et al. 2019**, "On Evaluating Adversarial Robustness" (arXiv 1902.06705,
  sections 5.2-5.4): accuracy falls to 0 as ε grows, iterative attacks beat single-step
  ones, white-box beats black-box, more steps do not help further.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.evaluation.adaptive import logits_of, zero_gradient_share
from robustlab.models.base import frozen, model_device, predict
from robustlab.models.cost import Meter, counted

AUTOATTACK = "Croce & Hein 2020 (AutoAttack), checks"
PINTOR = "Pintor et al. 2022, Indicators of Attack Failure"
CARLINI = "Carlini et al. 2019, On Evaluating Adversarial Robustness"

# Accuracies are ratios of image counts, so a difference of exactly ``tolerance`` (one image of
# 100 against 0.01) must pass or fail by the rule, not by binary rounding: 0.13 - 0.01 is
# 0.12000000000000001 while 0.54 - 0.01 is 0.53, so `0.12 >= 0.13 - 0.01` failed where
# `0.53 >= 0.54 - 0.01` passed. The slack is far below one image in any evaluation.
_SLACK = 1e-9


def _at_most(value: float, bound: float) -> bool:
    """``value <= bound`` for accuracies, or image counts against a bound computed from a
    tolerance, exact up to rounding."""
    return value <= bound + _SLACK


class CheckRecord(TypedDict):
    """A :class:`Check` as verdict records store it."""

    name: str
    passed: bool
    evidence: dict[str, float | int | str]
    source: str
    remedy: str
    forwards: int
    backwards: int


@dataclass(frozen=True)
class Check:
    """The outcome of one failure check (``passed`` False: the check fired)."""

    name: str
    passed: bool
    evidence: Mapping[str, float | int | str]
    source: str
    remedy: str  # what to try when it fires
    forwards: int = 0  # passes of one image each, counted (robustlab.models.cost)
    backwards: int = 0

    def to_dict(self) -> CheckRecord:
        return {
            "name": self.name,
            "passed": self.passed,
            "evidence": dict(self.evidence),
            "source": self.source,
            "remedy": self.remedy,
            "forwards": self.forwards,
            "backwards": self.backwards,
        }


def metered(check: Callable[..., Check]) -> Callable[..., Check]:
    """A check on a model whose ``forwards``/``backwards`` are the passes it ran, counted."""

    @functools.wraps(check)
    def run(model: nn.Module, *args: Any, **kwargs: Any) -> Check:
        with Meter() as cost:
            found = check(counted(model), *args, **kwargs)
        return replace(found, forwards=cost.forward, backwards=cost.backward)

    return run


# AutoAttack's checks ---------------------------------------------------------------------------


@metered
@torch.no_grad()
def randomized(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, passes: int = 5, tolerance: float = 1e-4
) -> Check:
    """Predictions or (ℓ2-normalised) logits that change between ``passes`` forward passes of
    the same images: a randomized defense, to be attacked with EOT."""
    outputs = [logits_of(model, x) for _ in range(passes)]
    correct = [int((o.argmax(1) == y.cpu()).sum()) for o in outputs]
    unit = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outputs]
    spread = max(float((a - b).norm(dim=1).max()) for a in unit for b in unit) if x.numel() else 0.0
    fired = len(set(correct)) > 1 or spread > tolerance
    return Check(
        "randomized",
        not fired,
        {"correct_per_pass": ",".join(map(str, correct)), "max_logit_change": spread},
        AUTOATTACK,
        "attack with EOT over 20 samples (version 'rand') and score by majority over passes",
    )


@metered
@torch.no_grad()
def probability_outputs(model: nn.Module, x: torch.Tensor, *, tolerance: float = 1e-5) -> Check:
    """Outputs in [0, 1] that sum to 1: the model returns probabilities, not logits, and
    margin and cross-entropy losses on them saturate."""
    out = logits_of(model, x)
    fired = bool(
        out.numel()
        and out.max() < 1 + tolerance
        and out.min() > -tolerance
        and ((out.sum(1) - 1).abs() < tolerance).all()
    )
    return Check(
        "probability_outputs",
        not fired,
        {
            "min": float(out.min()) if out.numel() else 0.0,
            "max": float(out.max()) if out.numel() else 0.0,
        },
        AUTOATTACK,
        "attack the logits: remove the final softmax (or take its log)",
    )


@metered
def zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Check:
    """Correctly classified images whose input gradient of the cross-entropy is all zero:
    a gradient attack has nothing to follow there (masked or shattered gradients)."""
    right = predict(model, x) == y.cpu()
    share = zero_gradient_share(model, x[right], y[right]) if right.any() else 0.0
    return Check(
        "zero_gradients",
        share == 0,
        {"share": share, "images": int(right.sum())},
        AUTOATTACK,
        "attack through the defense's declared surface (BPDA), transfer from the undefended "
        "base, or a score-based attack (Square, 5,000 queries)",
    )


def square_beats_gradients(broken: Mapping[str, int], n: int, *, tolerance: float = 0.002) -> Check:
    """Square breaking images every gradient attack before it left robust (``broken``:
    images each attack of a worst-case run broke, in running order): the gradients are
    likely masked, and the gradient attacks' numbers are loose."""
    order = list(broken)
    extra = broken.get("square", 0) if "square" in order and order.index("square") > 0 else 0
    return Check(
        "square_beats_gradients",
        _at_most(extra, tolerance * max(1, n)),
        {"square_extra": extra, "n": n},
        AUTOATTACK,
        "more Square queries and restarts, white-box attacks started from Square's adversarials, "
        "or an adaptive attack",
    )


class _Counter:
    calls = 0


@contextlib.contextmanager
def _counting_autograd() -> Iterator[_Counter]:
    """Count calls of torch.autograd.grad, torch.autograd.backward and Tensor.backward."""
    counter = _Counter()
    originals = (torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward)

    def counted(function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            counter.calls += 1
            return function(*args, **kwargs)

        return call

    torch.autograd.grad = counted(originals[0])  # type: ignore[assignment]
    torch.autograd.backward = counted(originals[1])  # type: ignore[assignment]
    torch.Tensor.backward = counted(originals[2])  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        torch.autograd.grad, torch.autograd.backward = originals[0], originals[1]  # type: ignore[assignment]
        torch.Tensor.backward = originals[2]  # type: ignore[method-assign]


@metered
def optimises_at_test_time(model: nn.Module, x: torch.Tensor) -> Check:
    """A forward pass that itself differentiates (calls ``backward`` or ``autograd.grad``):
    a dynamic defense that optimises at test time, which fixed attacks underestimate."""
    with _counting_autograd() as counter, torch.enable_grad():
        model(x[:1].to(model_device(model)))
    return Check(
        "test_time_optimisation",
        counter.calls == 0,
        {"autograd_calls": counter.calls},
        AUTOATTACK,
        "an adaptive attack on the whole test-time procedure (Tramèr et al. 2020), e.g. "
        "through its unrolled optimisation",
    )


def number_of_classes(classes: int, *, attacks: Sequence[str], target_classes: int = 9) -> Check:
    """Enough classes for the attacks asked for: the DLR loss needs 3, its targeted form 4,
    and targeted attacks at most ``classes - 1`` targets."""
    needs_dlr = any(a in ("apgd-dlr", "apgd-t") for a in attacks)
    targeted = [a for a in attacks if a in ("apgd-t", "fab-t")]
    problem = ""
    if needs_dlr and classes <= 2:
        problem = "the DLR loss needs at least 3 classes"
    elif "apgd-t" in attacks and classes == 3:
        problem = "the targeted DLR loss needs at least 4 classes"
    elif targeted and target_classes + 1 > classes:
        problem = f"{target_classes} target classes, but only {classes - 1} are possible"
    return Check(
        "number_of_classes",
        not problem,
        {"classes": classes, "target_classes": target_classes, "problem": problem},
        AUTOATTACK,
        "use the cross-entropy loss, or at most classes - 1 target classes",
    )


# Pintor et al.'s indicators --------------------------------------------------------------------


@metered
def unavailable_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Check:
    """No usable input gradient: backpropagation raises, does not reach the input
    (a non-differentiable step breaks the graph), or is all zero for some image."""
    xb = x[:1].to(model_device(model)).detach().requires_grad_(True)
    reason = ""
    try:
        with frozen(model), torch.enable_grad():
            loss = F.cross_entropy(model(xb), y[:1].to(xb.device))
            (grad,) = torch.autograd.grad(loss, xb, allow_unused=True)
        if grad is None:
            reason = "the graph does not reach the input"
    except RuntimeError as err:
        reason = f"backpropagation fails ({str(err).splitlines()[0][:80]})"
    zero = zero_gradients(model, x, y) if not reason else None
    if zero is not None and not zero.passed:
        reason = f"zero gradients on {zero.evidence['share']:.0%} of the correct images"
    return Check(
        "unavailable_gradients",
        not reason,
        {"reason": reason},
        PINTOR,
        "BPDA through the non-differentiable part, or a score-based attack",
    )


@metered
@torch.no_grad()
def unstable_predictions(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    radius: float = 8 / 255,
    samples: int = 10,
    threshold: float = 0.1,
    seed: int = 0,
) -> Check:
    """The loss changes a lot in a small neighbourhood of the input: the mean relative change
    of the cross-entropy under uniform noise in [-radius/2, radius/2] (Pintor et al.'s
    metric, capped at 1); above ``threshold`` the loss surface is too noisy to follow."""
    generator = torch.Generator().manual_seed(seed)
    labels = y.cpu()
    reference = F.cross_entropy(logits_of(model, x), labels, reduction="none")
    scale = reference.abs().where(reference != 0, torch.ones_like(reference))
    changes = []
    for _ in range(samples):
        noise = (torch.rand(x.shape, generator=generator) - 0.5) * radius
        loss = F.cross_entropy(
            logits_of(model, (x.cpu() + noise).clamp(0, 1)), labels, reduction="none"
        )
        changes.append(((loss - reference).abs() / scale).mean())
    metric = min(float(torch.stack(changes).mean()), 1.0) if changes else 0.0
    return Check(
        "unstable_predictions",
        metric <= threshold,
        {"mean_relative_loss_change": metric, "radius": radius, "samples": samples},
        PINTOR,
        "average the gradients over noise (EOT), or smooth the loss",
    )


def silent_success(path_success: torch.Tensor, returned_success: torch.Tensor) -> Check:
    """Adversarials found along the attack's path but not returned: ``path_success`` is
    (steps, n) success per iterate, ``returned_success`` (n,) of what the attack returned;
    the attack kept a worse point than one it had already visited."""
    found = path_success.any(0) & ~returned_success
    return Check(
        "silent_success",
        not bool(found.any()),
        {"images": int(found.sum()), "n": len(returned_success)},
        PINTOR,
        "return the best (or any successful) iterate, not the last one",
    )


def incomplete_optimisation(
    losses: torch.Tensor, *, last: int = 10, threshold: float = 0.05
) -> Check:
    """The attack's loss still rising at its last steps (``losses``: (steps,) or (steps, n),
    the loss the attack maximises): rescaled to [0, 1] and made monotone, a rise of more
    than ``threshold`` over the last ``last`` steps means more steps would help."""
    curve = losses.double()
    curve = curve.view(len(curve), -1).mean(1) if curve.ndim > 1 else curve
    span = float(curve.max() - curve.min())
    scaled = (curve - curve.min()) / span if span > 0 else torch.zeros_like(curve)
    best = torch.cummax(scaled, 0).values  # the best loss so far, as the attack keeps it
    tail = best[-min(last, len(best)) :]
    rise = float(tail.max() - tail.min()) if len(tail) else 0.0
    return Check(
        "incomplete_optimisation",
        rise <= threshold,
        {"rise_over_last_steps": rise, "steps": len(curve)},
        PINTOR,
        "more steps and restarts (APGD's schedule adapts its step size)",
    )


def transfer_failure(*, white_box_robust: int, transfer_robust: int, n: int) -> Check:
    """Adversarials made on the undefended base (or a surrogate) break more images than
    the white-box attack on the defended model: the white-box attack is failing."""
    return Check(
        "transfer_failure",
        transfer_robust >= white_box_robust,
        {"white_box_robust": white_box_robust, "transfer_robust": transfer_robust, "n": n},
        PINTOR,
        "start the white-box attack from the transferred adversarials; attack through BPDA",
    )


def unconstrained_attack_failure(
    *, success_at_full_budget: int, attacked: int, threshold: float = 0.99
) -> Check:
    """With ε = 1 (the whole pixel range) a working attack succeeds on (almost) every image;
    below ``threshold`` of ``attacked`` images, the attack cannot even find an unbounded
    adversarial, and its bounded numbers mean nothing."""
    rate = success_at_full_budget / max(1, attacked)
    return Check(
        "unconstrained_attack_failure",
        rate >= threshold,
        {"success_rate": rate, "attacked": attacked},
        PINTOR,
        "fix the attack's loss or its gradient path before trusting any bounded result",
    )


# Carlini et al.'s curves -----------------------------------------------------------------------


def accuracy_falls_to_zero(
    accuracy_by_eps: Mapping[float, float], *, threshold: float = 0.01
) -> Check:
    """At the largest ε of a robustness curve the accuracy must be ~0: an attack that cannot
    break every image with a large budget is not working (section 5.4)."""
    largest = max(accuracy_by_eps) if accuracy_by_eps else 0.0
    final = accuracy_by_eps.get(largest, 0.0)
    return Check(
        "accuracy_falls_to_zero",
        final <= threshold,
        {"largest_eps": largest, "accuracy": final},
        CARLINI,
        "raise ε until the accuracy reaches 0; if it never does, the attack is broken",
    )


def iterative_beats_single_step(
    *, single_step: float, iterative: float, tolerance: float = 0.0
) -> Check:
    """An iterative attack must leave at most the accuracy a single-step attack leaves
    (section 5.2): if not, the iterative attack's gradients are misleading it."""
    return Check(
        "iterative_beats_single_step",
        _at_most(iterative, single_step + tolerance),
        {"single_step": single_step, "iterative": iterative},
        CARLINI,
        "check the step size and the loss; start the iterative attack from FGSM's point",
    )


def white_box_beats_black_box(
    *, white_box: float, black_box: float, tolerance: float = 0.0
) -> Check:
    """A white-box attack must do at least as well as a black-box one (section 5.3)."""
    return Check(
        "white_box_beats_black_box",
        _at_most(white_box, black_box + tolerance),
        {"white_box": white_box, "black_box": black_box},
        CARLINI,
        "the white-box gradients are masked: attack through BPDA, or start from the "
        "black-box adversarials",
    )


def more_budget_does_not_help(*, budget: float, doubled: float, tolerance: float = 0.01) -> Check:
    """Doubling the steps (or restarts) must not lower the accuracy by more than
    ``tolerance``: else the attack has not converged and the number is loose (section 5.2)."""
    return Check(
        "more_budget_does_not_help",
        _at_most(budget - doubled, tolerance),
        {"accuracy": budget, "accuracy_doubled": doubled},
        CARLINI,
        "keep doubling steps and restarts until the accuracy stops falling",
    )


def more_queries_do_not_help(
    *, queries: int, more: int, accuracy: float, accuracy_more: float, tolerance: float = 0.01
) -> Check:
    """Section 5.2 for the score-based attack: Square with ``more`` queries instead of
    ``queries`` must not lower the accuracy by more than ``tolerance``, else Square has not
    converged and its number is loose. Asked directly, not only when Square happens to
    break an image every gradient attack left (``square_beats_gradients``), which on a
    purifier can hang on one image (docs/csc.md)."""
    return Check(
        "more_queries_do_not_help",
        _at_most(accuracy - accuracy_more, tolerance),
        {
            "queries": queries,
            "more_queries": more,
            "accuracy": accuracy,
            "accuracy_more": accuracy_more,
        },
        CARLINI,
        "Square with more queries (the escalation's full_queries; AutoAttack: 5,000) until "
        "the accuracy stops falling",
    )

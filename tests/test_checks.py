"""Every failure check (robustlab.evaluation.checks) fires on a model built to trip it and
passes on a plain model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.evaluation import checks


def _plain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()


class Noisy(nn.Module):
    """A randomized defense: fresh noise on the logits at every pass."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + torch.randn(len(x), 5)


class Quantized(nn.Module):
    """Shattered gradients: the input is rounded to 4 levels (zero gradient everywhere)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 3) / 3)


class Detached(nn.Module):
    """A defense that breaks the graph (e.g. a numpy step)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.detach())


class Optimising(nn.Module):
    """A dynamic defense: one gradient step on its input inside the forward pass."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.net(x).logsumexp(1).sum(), x)
        return self.net((x - 0.01 * grad.sign()).detach())


def _data(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    return x, model(x).argmax(1).detach()  # labels the plain model gets right


def test_randomized() -> None:
    plain = _plain()
    x, y = _data(plain)
    assert checks.randomized(plain, x, y).passed
    fired = checks.randomized(Noisy(plain), x, y)
    assert not fired.passed and fired.forwards == 5 * 16 and "EOT" in fired.remedy


def test_probability_outputs() -> None:
    plain = _plain()
    x, _ = _data(plain)
    assert checks.probability_outputs(plain, x).passed
    assert not checks.probability_outputs(nn.Sequential(plain, nn.Softmax(1)), x).passed


def test_zero_and_unavailable_gradients() -> None:
    plain = _plain()
    x, y = _data(plain)
    assert checks.zero_gradients(plain, x, y).passed
    zero = checks.zero_gradients(Quantized(plain), x, _data(Quantized(plain))[1])
    assert not zero.passed and zero.evidence["share"] == 1.0 and zero.backwards == 16
    assert checks.unavailable_gradients(plain, x, y).passed
    detached = checks.unavailable_gradients(Detached(plain), x, y)
    assert not detached.passed and detached.evidence["reason"]
    assert not checks.unavailable_gradients(Quantized(plain), x, y).passed


def test_square_beats_gradients() -> None:
    assert checks.square_beats_gradients({"apgd-ce": 5, "apgd-t": 1, "square": 0}, 100).passed
    fired = checks.square_beats_gradients({"apgd-ce": 5, "square": 3}, 100)
    assert not fired.passed and fired.evidence["square_extra"] == 3
    assert checks.square_beats_gradients({"square": 9}, 100).passed  # Square alone: no claim


def test_optimises_at_test_time() -> None:
    plain = _plain()
    x, _ = _data(plain)
    assert checks.optimises_at_test_time(plain, x).passed
    fired = checks.optimises_at_test_time(Optimising(plain), x)
    assert not fired.passed and fired.evidence["autograd_calls"] == 1
    assert torch.autograd.grad.__name__ == "grad"  # the counting wrappers are gone again


def test_number_of_classes() -> None:
    assert checks.number_of_classes(10, attacks=["apgd-ce", "apgd-t"], target_classes=9).passed
    assert not checks.number_of_classes(2, attacks=["apgd-dlr"]).passed
    assert not checks.number_of_classes(3, attacks=["apgd-t"], target_classes=2).passed
    assert not checks.number_of_classes(5, attacks=["apgd-t"], target_classes=9).passed
    assert checks.number_of_classes(2, attacks=["apgd-ce", "square"]).passed


def test_unstable_predictions() -> None:
    plain = _plain()
    x, y = _data(plain)
    assert checks.unstable_predictions(plain, x, y, radius=1 / 255).passed
    fired = checks.unstable_predictions(Noisy(plain), x, y, radius=1 / 255)
    assert not fired.passed and fired.forwards == 11 * 16


def test_silent_success_and_incomplete_optimisation() -> None:
    returned = torch.tensor([True, False, False])
    path = torch.tensor([[False, False, False], [True, False, False]])
    assert checks.silent_success(path, returned).passed
    path[0, 1] = True  # image 1 was adversarial at step 0, but the attack returned a failure
    fired = checks.silent_success(path, returned)
    assert not fired.passed and fired.evidence["images"] == 1
    converged = 1 - torch.exp(-torch.arange(100.0) / 5)  # flat long before the end
    assert checks.incomplete_optimisation(converged).passed
    assert not checks.incomplete_optimisation(torch.arange(100.0)).passed  # still rising
    noisy = torch.tensor([0.0, 1.0, 0.2, 0.9, 0.3] * 4)  # best-so-far is flat: converged
    assert checks.incomplete_optimisation(noisy).passed


@pytest.mark.parametrize("n", [50, 100, 300])
def test_a_drop_of_exactly_the_tolerance_passes_at_every_accuracy(n: int) -> None:
    # accuracies are k/n: one image of n against a tolerance of 1/n must pass at every k, not
    # only where binary rounding happens to favour it (0.13 - 0.01 != 0.12 in float64);
    # two images must fire at every k
    tolerance = 1 / n
    for k in range(2, n + 1):
        before, one, two = k / n, (k - 1) / n, (k - 2) / n
        assert checks.more_budget_does_not_help(
            budget=before, doubled=one, tolerance=tolerance
        ).passed
        assert checks.more_queries_do_not_help(
            queries=500, more=1000, accuracy=before, accuracy_more=one, tolerance=tolerance
        ).passed
        assert not checks.more_budget_does_not_help(
            budget=before, doubled=two, tolerance=tolerance
        ).passed
        assert not checks.more_queries_do_not_help(
            queries=500, more=1000, accuracy=before, accuracy_more=two, tolerance=tolerance
        ).passed
        # equal accuracies pass, one image worse fires (no tolerance)
        assert checks.iterative_beats_single_step(single_step=one, iterative=one).passed
        assert not checks.white_box_beats_black_box(white_box=before, black_box=one).passed


def test_attack_comparisons() -> None:
    assert checks.transfer_failure(white_box_robust=10, transfer_robust=12, n=50).passed
    assert not checks.transfer_failure(white_box_robust=10, transfer_robust=7, n=50).passed
    assert checks.unconstrained_attack_failure(success_at_full_budget=50, attacked=50).passed
    assert not checks.unconstrained_attack_failure(success_at_full_budget=40, attacked=50).passed
    assert checks.accuracy_falls_to_zero({2.0: 0.6, 8.0: 0.2, 64.0: 0.0}).passed
    assert not checks.accuracy_falls_to_zero({2.0: 0.6, 64.0: 0.3}).passed
    assert checks.iterative_beats_single_step(single_step=0.4, iterative=0.2).passed
    assert not checks.iterative_beats_single_step(single_step=0.2, iterative=0.4).passed
    assert checks.white_box_beats_black_box(white_box=0.1, black_box=0.3).passed
    assert not checks.white_box_beats_black_box(white_box=0.3, black_box=0.1).passed
    assert checks.more_budget_does_not_help(budget=0.30, doubled=0.295).passed
    fired = checks.more_budget_does_not_help(budget=0.30, doubled=0.20)
    assert not fired.passed and fired.to_dict()["source"].startswith("Carlini")
    assert checks.more_queries_do_not_help(
        queries=500, more=1000, accuracy=0.30, accuracy_more=0.30
    ).passed
    fired = checks.more_queries_do_not_help(
        queries=500, more=1000, accuracy=0.30, accuracy_more=0.28
    )
    assert not fired.passed and fired.evidence["more_queries"] == 1000

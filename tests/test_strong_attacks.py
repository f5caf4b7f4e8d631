"""APGD, APGD-T, FAB and Square: agreement with torchattacks' implementations of the reference
code (fra31/auto-attack) on a small trained model, and the contract of every attack."""

import copy

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from robustlab.attacks import APGD, APGDT, FAB, Square, build
from robustlab.attacks.apgd import dlr_loss
from robustlab.attacks.distances import l2, linf

torchattacks = pytest.importorskip("torchattacks")

N_TEST = 200


@pytest.fixture(scope="module")
def digits64() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained on scikit-learn's 8×8 digits, in float64: the two implementations
    differ in their random draws anyway, so only robust accuracies are compared, and float64
    keeps each side's numbers the same on every CPU."""
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float64).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 64, 10),
    ).double()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(15):
        order = torch.randperm(1500, generator=generator)
        for i in range(0, 1500, 64):
            batch = order[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model, x[1500 : 1500 + N_TEST], y[1500 : 1500 + N_TEST]


def accuracy(model: nn.Module, adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).double().mean())


# One point of robust accuracy, the bar: 2 of the 200 images.
CASES = {
    "apgd-ce-linf": (
        lambda m: APGD(m, eps=0.1, steps=50),
        lambda m: torchattacks.APGD(m, eps=0.1, steps=50, loss="ce"),
    ),
    "apgd-dlr-linf": (
        lambda m: APGD(m, eps=0.1, steps=50, loss="dlr"),
        lambda m: torchattacks.APGD(m, eps=0.1, steps=50, loss="dlr"),
    ),
    "apgdt-linf": (
        lambda m: APGDT(m, eps=0.1, steps=50, target_classes=3),
        lambda m: torchattacks.APGDT(m, eps=0.1, steps=50, n_classes=4),
    ),
    "apgd-ce-l2": (
        lambda m: APGD(m, eps=0.6, steps=50, norm="l2"),
        lambda m: torchattacks.APGD(m, norm="L2", eps=0.6, steps=50),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_apgd_robust_accuracy_is_within_one_point_of_torchattacks(digits64, case: str) -> None:
    model, x, y = digits64
    ours, ref = (make(model) for make in CASES[case])
    clean = accuracy(model, x, y)
    ours_acc, ref_acc = accuracy(model, ours(x, y), y), accuracy(model, ref(x, y), y)
    assert ours_acc < clean - 0.2  # the attack does something on this model
    assert abs(ours_acc - ref_acc) <= 0.01 + 1e-9, (ours_acc, ref_acc)


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.6)])
@pytest.mark.parametrize("targeted", [False, True])
def test_fab_robust_accuracy_is_within_one_point_of_torchattacks(
    digits64, norm: str, eps: float, targeted: bool
) -> None:
    """FAB and FAB-T (AutoAttack's targeted form, torchattacks' ``multi_targeted``).
    torchattacks' FAB makes float32 tensors internally: it attacks a float32 copy, scored in
    float64 (a last-bit difference moves an image only if it sits on the boundary)."""
    model, x, y = digits64
    ours = FAB(model, eps=eps, steps=30, norm=norm, targeted=targeted, target_classes=3)
    ref = torchattacks.FAB(
        copy.deepcopy(model).float(),
        norm="Linf" if norm == "linf" else "L2",
        eps=eps,
        steps=30,
        multi_targeted=targeted,
        n_classes=10,
    )
    ref.n_target_classes = 3
    ref_adv = ref(x.float(), y).double()
    ours_acc, ref_acc = accuracy(model, ours(x, y), y), accuracy(model, ref_adv, y)
    assert ours_acc < accuracy(model, x, y) - 0.2
    assert abs(ours_acc - ref_acc) <= 0.01 + 1e-9, (ours_acc, ref_acc)


@pytest.mark.parametrize("norm, p", [("linf", 1.0), ("l2", 2.0)])
def test_fab_finds_the_minimal_perturbation_of_a_linear_model(norm: str, p: float) -> None:
    """For an affine classifier the closest boundary is known in closed form: the smallest
    (z_y − z_t) / ‖w_y − w_t‖_q over t ≠ y (q dual to the norm; images mid-box, so the box
    is not active). FAB lands within its overshoot-and-pull-back of it (half a percent)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).double().eval()
    x = 0.4 + 0.2 * torch.rand(8, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        z = model(x)
    y, w = z.argmax(1), model[1].weight
    adv = FAB(model, eps=1.0 if norm == "linf" else 4.0, steps=50, norm=norm)(x, y)
    dist = (adv - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
    exact = torch.stack(
        [
            min((z[i, y[i]] - z[i, t]) / (w[y[i]] - w[t]).norm(p=p) for t in range(4) if t != y[i])
            for i in range(8)
        ]
    )
    assert (model(adv).argmax(1) != y).all()
    assert torch.all(dist >= exact * (1 - 1e-9)) and torch.all(dist <= exact * 1.01)


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.6)])
def test_square_is_at_least_as_strong_as_torchattacks(digits64, norm: str, eps: float) -> None:
    model, x, y = digits64
    ours = Square(model, eps=eps, queries=1000, norm=norm).run(x, y)
    ref = torchattacks.Square(
        model, norm="Linf" if norm == "linf" else "L2", eps=eps, n_queries=1000
    )(x, y)
    assert accuracy(model, ours.adv, y) <= accuracy(model, ref, y) + 0.01 + 1e-9
    assert ours.queries is not None and ours.queries.max() <= 1000
    wrong = model(x).argmax(1) != y
    assert (ours.queries[wrong] == 1).all()  # already misclassified: the initial query only


@pytest.mark.parametrize(
    "make",
    [
        lambda m: APGD(m, eps=0.1, steps=20, restarts=2),
        lambda m: APGD(m, eps=0.6, steps=20, norm="l2", loss="dlr"),
        lambda m: APGDT(m, eps=0.1, steps=10, target_classes=2),
        lambda m: Square(m, eps=0.1, queries=200),
        lambda m: FAB(m, eps=0.05, steps=10, restarts=2),
        lambda m: FAB(m, eps=0.3, steps=10, norm="l2", targeted=True, target_classes=2),
        lambda m: Square(m, eps=0.6, queries=200, norm="l2"),
    ],
)
def test_bounds_seeds_and_batch_prefix(digits64, make) -> None:
    model, x, y = digits64
    x, y = x[:40], y[:40]
    attack = make(model)
    adv = attack(x, y)
    if attack.norm == "linf":
        assert linf(x, adv).max() <= attack.eps + 1e-12
    else:
        assert l2(x, adv).max() <= attack.eps + 1e-9
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv, make(model)(x, y))  # same seed, same adversarials
    # an example's draws depend on its position only: the first 16 are attacked alike alone
    assert torch.allclose(make(model)(x[:16], y[:16]), adv[:16], rtol=0, atol=1e-12)


def test_another_seed_starts_elsewhere(digits64) -> None:
    model, x, y = digits64
    a = APGD(model, eps=0.1, steps=5, seed=0)(x[:20], y[:20])
    b = APGD(model, eps=0.1, steps=5, seed=1)(x[:20], y[:20])
    assert not torch.equal(a, b)


def test_examples_already_misclassified_are_left_alone(digits64) -> None:
    model, x, y = digits64
    wrong = model(x).argmax(1) != y
    assert wrong.any()
    adv = APGD(model, eps=0.1, steps=5)(x, y)
    assert torch.equal(adv[wrong], x[wrong])


def test_targeted_apgd_reaches_the_runner_up(digits64) -> None:
    model, x, y = digits64
    target = model(x).topk(2, dim=1).indices[:, 1]
    for loss in ("ce", "dlr"):
        adv = APGD(model, eps=0.2, steps=50, loss=loss)(x, y, target)
        assert (model(adv).argmax(1) == target).double().mean() > 0.8, loss


def test_eot_samples_of_a_deterministic_model_change_nothing(digits64) -> None:
    model, x, y = digits64
    one = APGD(model, eps=0.1, steps=10)(x[:20], y[:20])
    three = APGD(model, eps=0.1, steps=10, eot_samples=3)(x[:20], y[:20])
    assert torch.allclose(one, three, rtol=0, atol=1e-12)


def test_dlr_loss_ignores_shifts_and_scales_of_the_logits() -> None:
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y, t = torch.arange(16) % 10, (torch.arange(16) + 3) % 10
    for target in (None, t):
        base = dlr_loss(logits, y, target)
        assert torch.allclose(dlr_loss(5 * logits + 7, y, target), base, atol=1e-9)
    # untargeted: -(z_y - max other) / (z_π1 - z_π3), written out for one example
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0]], dtype=torch.float64)
    assert float(dlr_loss(z, torch.tensor([0]), None)) == pytest.approx(-(3 - 2) / (3 - 1))
    assert float(dlr_loss(z, torch.tensor([1]), None)) == pytest.approx(-(1 - 3) / (3 - 1))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m: APGD(m, eps=0), "eps=0 must be > 0"),
        (lambda m: APGD(m, loss="hinge"), "loss 'hinge' must be 'ce' or 'dlr'"),
        (lambda m: APGD(m, rho=2), r"rho=2 must be in \[0.0, 1.0\]"),
        (lambda m: APGD(m, restarts=0), "restarts=0 must be a positive integer"),
        (lambda m: APGDT(m, target_classes=0), "target_classes=0"),
        (lambda m: Square(m, queries=0), "queries=0 must be a positive integer"),
        (lambda m: FAB(m, eta=0.5), r"eta=0.5 must be in \[1.0, 2.0\]"),
        (lambda m: FAB(m, targeted=True, target_classes=10)(*_two(m)), "only 9 other classes"),
        (lambda m: Square(m, norm="l1"), "norm 'l1'"),
        (
            lambda m: build("apgd", m, n_restarts=2),
            "attack .apgd. takes no .n_restarts.; its parameters: eps, steps, norm, loss, restarts",
        ),
    ],
)
def test_bad_parameters_are_clear_errors(digits64, make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(digits64[0])


def _two(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    return x, model(x).argmax(1)


def test_dlr_needs_enough_classes() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    x, y = torch.rand(2, 1, 2, 2, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="at least 4 classes"):
        APGDT(model, target_classes=2)(x, y)
    with pytest.raises(ValueError, match="needs at least 4 classes"):
        APGD(model, loss="dlr")(x, y, torch.tensor([1, 2]))


def test_repr_shows_the_parameters(digits64) -> None:
    text = repr(APGD(digits64[0], eps=0.1, steps=7, loss="dlr"))
    assert text.startswith("APGD(") and "steps=7" in text and "loss='dlr'" in text

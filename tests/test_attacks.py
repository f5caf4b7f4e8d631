"""Attacks: equality with the reference implementations, and the contract's properties."""

import warnings

import pytest
import torch
from torch import nn

from robustlab.attacks import (
    CW,
    FGSM,
    MIFGSM,
    PGD,
    Boundary,
    Ensemble,
    GaussianNoise,
    available,
    build,
)
from robustlab.attacks.distances import l2, linf

torchattacks = pytest.importorskip("torchattacks")


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
    )
    model[1].running_mean.uniform_(-0.1, 0.1)  # non-trivial eval statistics
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def batch(device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = tiny_model().to(device)
    x = torch.rand(24, 1, 12, 12, generator=torch.Generator().manual_seed(1)).to(device)
    return model, x, model(x).argmax(1)


@pytest.fixture(scope="module")
def batch64(device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The batch in float64, for comparisons with reference implementations: two code paths
    reduce in different orders, and in float32 a gradient near zero can change its sign
    between CPUs (one pixel in 28,800 moved by 2/255 on an EPYC); in float64 they agree."""
    model = tiny_model(dtype=torch.float64).to(device)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(24, 1, 12, 12, generator=generator, dtype=torch.float64).to(device)
    return model, x, model(x).argmax(1)


def test_fgsm_equals_torchattacks(batch64) -> None:
    model, x, y = batch64
    ours = FGSM(model, eps=8 / 255)(x, y)
    ref = torchattacks.FGSM(model, eps=8 / 255)(x, y)
    assert (ours - ref).abs().max() <= 1e-12


@pytest.mark.parametrize("eps, step, steps", [(8 / 255, 1 / 255, 10), (16 / 255, 2 / 255, 20)])
def test_pgd_equals_torchattacks(batch64, eps: float, step: float, steps: int) -> None:
    model, x, y = batch64
    ours = PGD(model, eps=eps, step=step, steps=steps)(x, y)
    ref = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=False)(x, y)
    assert (ours - ref).abs().max() <= 1e-12


def test_mifgsm_equals_torchattacks(batch64) -> None:
    model, x, y = batch64
    ours = MIFGSM(model, eps=8 / 255, step=2 / 255, steps=10, decay=1.0)(x, y)
    ref = torchattacks.MIFGSM(model, eps=8 / 255, alpha=2 / 255, steps=10, decay=1.0)(x, y)
    assert (ours - ref).abs().max() <= 1e-12


def test_mifgsm_does_not_depend_on_the_batch() -> None:
    model = tiny_model(dtype=torch.float64)  # float64: no rounding-level sign flips
    x = torch.rand(16, 1, 12, 12, dtype=torch.float64)
    y = model(x).argmax(1)
    attack = MIFGSM(model, eps=8 / 255, step=1 / 255, steps=10)
    together = attack(x, y)
    alone = torch.cat([attack(x[i : i + 1], y[i : i + 1]) for i in range(16)])
    assert (together - alone).abs().max() <= 1e-9


def test_cw_matches_or_beats_torchattacks_over_the_same_c_grid(batch64) -> None:
    model, x, y = batch64
    grid, steps = (0.1, 1.0, 10.0), 100
    best = torch.full((len(x),), float("inf"))
    for c in grid:  # torchattacks' CW has a fixed c: search the grid by hand
        adv = torchattacks.CW(model, c=c, kappa=0, steps=steps, lr=0.01)(x, y)
        dist = l2(x, adv)
        best = torch.where((model(adv).argmax(1) != y) & (dist < best), dist, best)
    ours = CW(model, c=grid[0], kappa=0, steps=steps, search_steps=len(grid))(x, y)
    hit = model(ours).argmax(1) != y
    ref_hit = best.isfinite()
    assert hit.float().mean() >= ref_hit.float().mean()
    assert l2(x, ours)[hit].median() <= 1.05 * best[ref_hit].median()


def test_cw_confidence_is_reached(batch) -> None:
    model, x, y = batch
    adv = CW(model, c=1.0, kappa=0.5, steps=200, search_steps=4)(x[:8], y[:8])
    logits = model(adv)
    own = logits.gather(1, y[:8, None])[:, 0]
    other = logits.scatter(1, y[:8, None], float("-inf")).amax(1)
    success = adv.ne(x[:8]).flatten(1).any(1)
    assert success.any()
    assert (other - own)[success].min() >= 0.5 - 1e-4


def test_boundary_is_close_to_foolbox_at_the_same_budget() -> None:
    fb = pytest.importorskip("foolbox")
    model = tiny_model()
    x = torch.rand(48, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    steps = 600
    ours = Boundary(model, steps=steps, seed=0).run(x, y)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ref, _ = fb.attacks.BoundaryAttack(steps=steps)(
            fb.PyTorchModel(model, bounds=(0, 1)),
            x,
            fb.criteria.Misclassification(y),
            epsilons=None,
        )
    assert (model(ours.adv).argmax(1) != y).all()
    assert l2(x, ours.adv).median() <= 1.25 * l2(x, ref).median()
    # init (1 check + draws + 25 bisections) + one query a step + one spherical check per 10
    assert ours.queries.max() <= 1 + 100 + 25 + steps + steps // 10


def test_boundary_respects_the_query_budget(batch) -> None:
    model, x, y = batch
    result = Boundary(model, steps=10_000, max_queries=300, candidates=4, update_every=1).run(x, y)
    assert result.queries.max() <= 300 + 2 * 4  # the last step may overrun by one step's queries
    assert (model(result.adv).argmax(1) != y).all()


def test_gaussian_noise_is_truncated_and_seeded(batch) -> None:
    model, x, y = batch
    noisy = GaussianNoise(model, sigma=8, seed=3)(x, y)
    inner = (x > 16 / 255) & (x < 1 - 16 / 255)  # where clipping to [0, 1] cannot act
    assert (noisy - x)[inner].abs().max() <= 16 / 255 + 1e-6
    # N(0, 1) clamped to [-2, 2] has standard deviation 0.959
    assert (noisy - x)[inner].std() == pytest.approx(8 / 255 * 0.959, rel=0.05)
    assert torch.equal(noisy, GaussianNoise(model, sigma=8, seed=3)(x, y))
    assert not torch.equal(noisy, GaussianNoise(model, sigma=8, seed=4)(x, y))


ALL = {
    "fgsm": {"eps": 8 / 255},
    "pgd": {"eps": 8 / 255, "step": 2 / 255, "steps": 5, "random_start": True},
    "mifgsm": {"eps": 8 / 255, "step": 2 / 255, "steps": 5},
    "cw": {"c": 1.0, "steps": 20, "search_steps": 2},
    "boundary": {"steps": 50},
    "noise": {"sigma": 8},
    "apgd": {"eps": 8 / 255, "steps": 5, "loss": "dlr"},
    "apgdt": {"eps": 8 / 255, "steps": 5, "target_classes": 2},
    "square": {"eps": 8 / 255, "queries": 30},
    "fab": {"eps": 8 / 255, "steps": 5, "targeted": True, "target_classes": 2},
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_contract_properties(batch, name: str) -> None:
    model, x, y = batch
    model.train()  # the attack must use eval mode and give the mode back
    model.zero_grad(set_to_none=True)  # torchattacks' CW, run earlier, leaves weight gradients
    try:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        attack = build(name, model, seed=7, **ALL[name])
        adv = attack(x, y)
        assert model.training
        assert all(p.grad is None for p in model.parameters())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
        if "eps" in ALL[name]:
            assert linf(x, adv).max() <= ALL[name]["eps"] + 1e-6
        assert torch.equal(adv, build(name, model, seed=7, **ALL[name])(x, y))
    finally:
        model.eval()


def test_targeted_attacks_reach_the_target(batch) -> None:
    model, x, y = batch
    target = model(x).topk(2, dim=1).indices[:, 1]  # each example's runner-up class
    attacks = (
        PGD(model, eps=32 / 255, step=2 / 255, steps=30),
        CW(model, c=1.0, steps=100, search_steps=3),
    )
    for attack in attacks:
        hit = (model(attack(x, y, target)).argmax(1) == target).float().mean()
        assert hit > 0.8, type(attack).__name__


def test_l2_pgd_stays_in_its_ball(batch) -> None:
    model, x, y = batch
    adv = PGD(model, eps=0.5, step=0.1, steps=10, norm="l2", random_start=True)(x, y)
    assert l2(x, adv).max() <= 0.5 + 1e-5
    assert (model(adv).argmax(1) != y).any()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m: PGD(m, eps=-0.1), r"eps=-0.1 must be in \[0.0, 1.0\]"),
        (lambda m: PGD(m, eps=16), "e.g. eps=16/255"),
        (lambda m: PGD(m, steps=0), "steps=0 must be a positive integer"),
        (lambda m: MIFGSM(m, decay=-1), "decay"),
        (lambda m: CW(m, c=0), "c > 0"),
        (lambda m: Boundary(m, max_queries=0), "max_queries"),
        (lambda m: build("deepfool", m), "unknown attack 'deepfool'"),
        (
            lambda m: build("pgd", m, epsilon=0.1),
            "attack .pgd. takes no .epsilon.; its parameters: eps, step",
        ),
    ],
)
def test_bad_parameters_are_clear_errors(batch, make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(batch[0])


def test_bad_inputs_are_rejected_before_any_work(batch) -> None:
    model, x, y = batch
    attack = PGD(model, eps=8 / 255, steps=2)
    with pytest.raises(ValueError, match=r"must be in 0\.\.9"):
        attack(x, y + 10)
    with pytest.raises(ValueError, match="NaN"):
        attack(torch.full_like(x, float("nan")), y)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
        attack(x * 255, y)
    with pytest.raises(ValueError, match="integers of shape"):
        attack(x, y.float())


def test_ensemble_averages_logits() -> None:
    a, b = tiny_model(0), tiny_model(1)
    x = torch.rand(4, 1, 12, 12)
    assert torch.allclose(Ensemble([a, b])(x), (a(x) + b(x)) / 2)
    assert set(available()) == set(ALL)


def test_weights_requires_grad_is_restored(batch) -> None:
    model, x, y = batch
    model[0].weight.requires_grad_(False)  # a user's partly frozen model stays as it was
    try:
        PGD(model, eps=8 / 255, steps=2)(x, y)
        assert not model[0].weight.requires_grad and model[0].bias.requires_grad
        assert model[5].weight.requires_grad
    finally:
        model[0].weight.requires_grad_(True)

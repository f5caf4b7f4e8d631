"""The strong (AutoAttack-style) protocol: worst case per image, resumable, with the flags;
and the ε-curves found by bisection."""

from pathlib import Path

import pytest
import torch
from torch import nn

from robustlab.attacks.adversarial_set import attack_in_batches
from robustlab.evaluation import strong
from robustlab.evaluation.curve import EpsilonSearch, accuracy_at, smallest_eps
from robustlab.evaluation.protocols.base import flag_rising_with_eps
from robustlab.evaluation.strong import StrongConfig, strong_attack
from robustlab.experiments.spec import parse_spec
from tests.test_defenses import Quantized, _plain

CONFIG = StrongConfig(eps=32 / 255, steps=10, target_classes=3, queries=100)


@pytest.fixture
def batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = _plain(1)
    x = torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10  # four images the model gets wrong from the start
    return model, x, y


def test_each_attack_runs_only_on_the_images_still_robust(batch, monkeypatch) -> None:
    model, x, y = batch
    seen: list[tuple[str, int]] = []
    original = strong.attack_in_batches

    def counting(kind: str, attacked: nn.Module, params: dict, xs: torch.Tensor, *a, **k):
        seen.append((kind, len(xs)))
        return original(kind, attacked, params, xs, *a, **k)

    monkeypatch.setattr(strong, "attack_in_batches", counting)
    result = strong_attack(model, x, y, CONFIG)
    assert result.clean_accuracy.hits == 44
    robust_before = [44, *[rate.hits for rate in result.after.values()][:-1]]
    assert all(robust_before)  # on this batch every attack has images left to attack
    assert seen == list(zip(["apgd", "apgdt", "square"], robust_before, strict=True))
    hits = [rate.hits for rate in result.after.values()]
    assert hits == sorted(hits, reverse=True)  # cumulative: never rises along the sequence
    assert 44 - sum(result.broken.values()) == result.accuracy.hits
    assert result.accuracy.hits < 44  # the attacks break this linear model


def test_stopped_runs_continue_from_the_flags_on_disk(batch, tmp_path: Path, monkeypatch) -> None:
    model, x, y = batch
    first = strong_attack(model, x, y, CONFIG, store=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "apgd-ce.safetensors",
        "apgd-t.safetensors",
        "square.safetensors",
    ]
    (tmp_path / "square.safetensors").unlink()  # as if stopped before Square finished
    calls: list[str] = []
    original = strong.attack_in_batches

    def logged(kind: str, *args, **kwargs):
        calls.append(kind)
        return original(kind, *args, **kwargs)

    monkeypatch.setattr(strong, "attack_in_batches", logged)
    again = strong_attack(model, x, y, CONFIG, store=tmp_path)
    assert first.after["apgd-t"].hits > 0  # so Square has images to attack
    assert calls == ["square"]  # APGD-CE and APGD-T are read back, with what they cost
    recomputed, read_back = again.to_dict(), first.to_dict()
    for name in ("apgd-ce", "apgd-t"):
        assert recomputed["cost_by_attack"][name] == read_back["cost_by_attack"][name]
    assert recomputed["cost_by_attack"]["apgd-ce"]["backward"] > 0  # counted, not estimated
    square = (recomputed["cost_by_attack"].pop("square"), read_back["cost_by_attack"].pop("square"))
    assert square[0]["forward"] == square[1]["forward"]  # the same passes, other seconds
    assert recomputed == read_back
    other = StrongConfig(eps=16 / 255, steps=10, target_classes=3, queries=100)
    calls.clear()
    strong_attack(model, x, y, other, store=tmp_path)  # other settings: the files do not count
    assert calls[:1] == ["apgd"]


def test_masked_gradients_are_flagged_and_square_still_breaks_images() -> None:
    plain = _plain(1)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = plain(x).argmax(1)
    masked = Quantized(plain)  # rounds its input: every input gradient is zero
    y = masked(x).argmax(1)
    result = strong_attack(
        masked, x, y, StrongConfig(eps=64 / 255, steps=5, target_classes=2, queries=200)
    )
    assert result.zero_gradient_share == 1.0
    assert {"zero_gradients", "square_beats_gradients"} <= set(result.flags)
    assert result.broken["square"] > 0
    honest = strong_attack(plain, x, plain(x).argmax(1), CONFIG)
    assert honest.flags == [] and honest.zero_gradient_share == 0


def test_accuracy_rising_with_eps_is_flagged() -> None:
    def cell(eps: float, hits: int) -> dict:
        return {"attack": "a", "eps": eps, "accuracy": {"hits": hits}, "flags": []}

    fine = flag_rising_with_eps([cell(2, 30), cell(4, 20), cell(8, 5)], group=lambda r: r["attack"])
    assert all(c["flags"] == [] for c in fine)
    odd = flag_rising_with_eps([cell(2, 30), cell(4, 10), cell(8, 12)], group=lambda r: r["attack"])
    rising = ["accuracy_rises_with_eps"]
    assert [c["flags"] for c in odd] == [[], rising, rising]  # ε 4 → 8 left more images


@pytest.mark.parametrize(
    "protocol, message",
    [
        ({"eps": 300}, "eps must be a strength in 0-255"),
        ({"eps": []}, "eps must be a strength in 0-255"),
        ({"attacks": ["deepfool"]}, "strong attacks \\['deepfool'\\]"),
        ({"queries": 0}, "queries=0 must be a positive integer"),
        ({"target_classes": 0}, "target_classes=0"),
        ({"n": 0}, "n = 0 must be a positive integer"),
        ({"models": []}, "needs a non-empty 'models' list"),
    ],
)
def test_strong_spec_errors_name_the_key(protocol: dict, message: str) -> None:
    entry = {"type": "strong", "models": ["standard"], **protocol}
    source = {"experiment": {"dataset": "digits"}, "models": {"standard": {}}, "protocols": [entry]}
    with pytest.raises(ValueError, match=message):
        parse_spec(source)


def test_smallest_eps_by_bisection_on_a_linear_model() -> None:
    model = _plain(1)
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10
    search = EpsilonSearch(eps_max=16 / 255, search_steps=4, steps=10)
    star = smallest_eps(model, x, y, search)
    assert (star[:3] == 0).all()  # misclassified clean: broken at ε = 0
    finite = star[torch.isfinite(star)]
    assert ((finite > 0) & (finite < search.eps_max)).sum() >= 10  # the bisection had work
    steps = finite / search.resolution
    assert torch.allclose(steps, steps.round(), atol=1e-9)  # on the bisection's grid
    # no attack beats the exact ℓ∞ distance to the nearest other class (unclipped: a bound)
    weight = model[1].weight
    with torch.no_grad():
        logits = model(x)
        gap = logits.gather(1, y[:, None]) - logits
        norms = (weight[y][:, None, :] - weight[None, :, :]).abs().sum(2)
        distance = (gap / norms.clamp_min(1e-12)).masked_fill(gap <= 0, float("inf")).amin(1)
    assert (star[3:] >= distance[3:] - 1e-5).all()  # 1e-5: float32 logits, not the search
    # the first stage is exactly APGD-CE at ε_max on every correctly classified image
    adv = attack_in_batches(
        "apgd", model, {"eps": search.eps_max, "steps": 10}, x[3:], y[3:], batch_size=64
    )
    survivors = int((model(adv.adv).argmax(1) == y[3:]).sum())
    assert survivors == int(torch.isinf(star).sum())
    rates = accuracy_at(star, [search.resolution * k for k in (1, 4, 16)])
    hits = [rate.hits for rate in rates.values()]
    assert hits == sorted(hits, reverse=True) and hits[-1] == survivors


@pytest.mark.parametrize(
    "protocol, message",
    [
        ({"eps": [3]}, "multiple of eps_max / 2\\*\\*search_steps = 2"),
        ({"eps": [64]}, "in \\(0, eps_max\\]"),
        ({"eps_max": 0}, "eps_max = 0 must be in 0-255"),
        ({"search_steps": 0}, "search_steps = 0 must be a positive integer up to 20"),
    ],
)
def test_curve_spec_errors_name_the_key(protocol: dict, message: str) -> None:
    entry = {"type": "curve", "models": ["standard"], "search_steps": 4, **protocol}
    source = {"experiment": {"dataset": "digits"}, "models": {"standard": {}}, "protocols": [entry]}
    with pytest.raises(ValueError, match=message):
        parse_spec(source)

"""The strong (AutoAttack-style) protocol: worst case per image, resumable, with the flags."""

from pathlib import Path

import pytest
import torch
from torch import nn

from robustlab.evaluation import strong
from robustlab.evaluation.strong import StrongConfig, strong_attack
from robustlab.experiments.executor import flag_rising_with_eps
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
        "apgd-ce.safetensors", "apgd-t.safetensors", "square.safetensors",
    ]  # fmt: skip
    (tmp_path / "square.safetensors").unlink()  # as if stopped before Square finished
    calls: list[str] = []
    original = strong.attack_in_batches

    def logged(kind: str, *args, **kwargs):
        calls.append(kind)
        return original(kind, *args, **kwargs)

    monkeypatch.setattr(strong, "attack_in_batches", logged)
    again = strong_attack(model, x, y, CONFIG, store=tmp_path)
    assert first.after["apgd-t"].hits > 0  # so Square has images to attack
    assert calls == ["square"]  # APGD-CE and APGD-T are read back
    assert again.to_dict() == first.to_dict()
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
    result = strong_attack(masked, x, y, StrongConfig(eps=64 / 255, steps=5, target_classes=2,
                                                      queries=200))  # fmt: skip
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
        ({"attacks": ["fab"]}, "strong attacks \\['fab'\\]"),
        ({"queries": 0}, "queries=0 must be a positive integer"),
        ({"target_classes": 0}, "target_classes=0"),
        ({"n": 0}, "n = 0 must be a positive integer"),
        ({"models": []}, "needs a non-empty 'models' list"),
    ],
)
def test_strong_spec_errors_name_the_key(protocol: dict, message: str) -> None:
    entry = {"type": "strong", "models": ["standard"], **protocol}
    source = {"experiment": {"dataset": "digits"}, "models": {"standard": {}},
              "protocols": [entry]}  # fmt: skip
    with pytest.raises(ValueError, match=message):
        parse_spec(source)

"""One registry pattern (robustlab.registry) and attacks built once, seeded at call time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab import attacks, data, models
from robustlab.attacks import adversarial_set
from robustlab.attacks.universal import UNIVERSAL_ATTACKS
from robustlab.defenses.registry import PURIFIERS  # the module that imports every purifier
from robustlab.evaluation.protocols import PROTOCOLS
from robustlab.registry import Registry


def test_a_registry_registers_at_the_definition_and_lists_by_pattern() -> None:
    parts: Registry[type] = Registry("widget")

    @parts.register()
    class Small:
        name = "small"

    @parts.register("large-one")
    class Large:
        pass

    assert parts.get("small") is Small and parts.get("large-one") is Large
    assert parts.names() == ["large-one", "small"] and parts.names("s*") == ["small"]
    with pytest.raises(ValueError, match="unknown widget 'x'; choose one of large-one, small"):
        parts.get("x")
    with pytest.raises(ValueError, match="registered twice"):
        parts.register("small")(Large)


def test_every_kind_of_part_is_in_its_registry() -> None:
    assert {"pgd", "apgd", "apgdt", "square", "boundary"} <= set(attacks.available())
    assert attacks.available("apgd*") == ["apgd", "apgdt"]
    assert set(UNIVERSAL_ATTACKS) == {"uap", "spgd", "fff", "gap", "nag", "singular", "guap"}
    assert models.available("resnet*") == ["resnet10", "resnet18", "resnet50", "resnet8"]
    assert {"digits", "fashion-mnist", "cifar10-jpeg"} <= set(data.available())
    assert set(PURIFIERS) == {"bits", "dict", "jpeg", "median"}
    assert set(PROTOCOLS) == {
        "adaptive",
        "curve",
        "decision",
        "ensemble_transfer",
        "noise",
        "shuffle",
        "strong",
        "transfer",
        "universal",
        "verdict",
        "whitebox",
    }


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))


@pytest.mark.parametrize(
    "name, params",
    [
        ("pgd", {"eps": 8 / 255, "step": 2 / 255, "steps": 3, "random_start": True}),
        ("apgd", {"eps": 8 / 255, "steps": 5}),
        ("square", {"eps": 8 / 255, "queries": 20}),
        ("noise", {"sigma": 8.0}),
    ],
)
def test_the_seed_of_the_call_equals_the_seed_of_the_build(name: str, params: dict) -> None:
    model, x = _model(), torch.rand(6, 3, 8, 8)
    y = model(x).argmax(1)
    built_once = attacks.build(name, model, **params)
    at_build = attacks.build(name, model, seed=7, **params)(x, y)
    assert torch.equal(built_once(x, y, seed=7), at_build)  # bit for bit
    assert torch.equal(built_once(x, y, seed=7), built_once(x, y, seed=7))  # stateless
    if name != "apgd":  # APGD's random start only matters once the first run fails
        assert not torch.equal(built_once(x, y, seed=8), at_build)


def test_an_attack_is_built_once_per_cell_not_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from robustlab.attacks.base import AttackConfig

    built = []
    original = AttackConfig.build

    def counting(self: AttackConfig, *args: object, **kwargs: object) -> attacks.Attack:
        built.append(self.kind)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AttackConfig, "build", counting)
    model, x = _model(), torch.rand(10, 3, 8, 8)
    y = model(x).argmax(1)
    params = {"eps": 8 / 255, "step": 2 / 255, "steps": 2}
    result = adversarial_set.attack_in_batches("pgd", model, params, x, y, seed=3, batch_size=3)
    assert built == ["pgd"] and result.adv.shape == x.shape  # four batches, one attack
    for start in range(0, 10, 3):  # each batch: the attack called with its own seed
        alone = attacks.build("pgd", model, **params)(
            x[start : start + 3], y[start : start + 3], seed=adversarial_set.batch_seed(3, start)
        )
        assert torch.equal(result.adv[start : start + 3], alone)


def test_attack_parameters_are_checked_before_any_model_exists() -> None:
    from robustlab.attacks.base import UNBOUND
    from robustlab.attacks.registry import check
    from robustlab.evaluation.strong import StrongConfig

    check("pgd", eps=8 / 255, step=2 / 255, steps=3)  # fine: no model needed
    with pytest.raises(ValueError, match="steps=0 must be a positive integer"):
        check("pgd", eps=8 / 255, step=2 / 255, steps=0)
    with pytest.raises(ValueError, match=r"attack 'pgd' takes no 'queries'; its parameters: eps"):
        check("pgd", queries=10)
    with pytest.raises(ValueError, match="universal attack 'uap'"):
        UNIVERSAL_ATTACKS.get("uap").check(nope=1)
    with pytest.raises(RuntimeError, match="constructor ran the model"):
        UNBOUND(torch.zeros(1, 3, 8, 8))  # a constructor that needed the network would fail
    with pytest.raises(ValueError, match="queries=0 must be a positive integer"):
        StrongConfig(eps=8 / 255, queries=0)
    kind, params = StrongConfig(eps=8 / 255, steps=7).attack("apgd-t")
    assert kind == "apgdt" and params == {
        "eps": 8 / 255,
        "norm": "linf",
        "steps": 7,
        "restarts": 1,
        "target_classes": 9,
    }

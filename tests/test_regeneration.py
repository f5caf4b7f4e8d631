"""Selective feature regeneration: ranking, FRUs, frozen baseline, metric, CLI round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from robustlab.attacks.universal import UniversalPerturbation
from robustlab.cli import main
from robustlab.data import load_dataset
from robustlab.defenses.regeneration import (
    FeatureRegenerationUnit,
    RegeneratedConv,
    add_regeneration,
    auto_layers,
    conv_layers,
    fru_parameters,
    fru_train_mode,
    restoration_accuracy,
    susceptibility_ranking,
    synthesise,
)
from robustlab.experiments.sfr import load_sfr
from robustlab.io import RobustlabError
from robustlab.runs import load


def _user_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def test_ranking_is_by_weight_l1_norm_highest_first() -> None:
    conv = nn.Conv2d(1, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -5.0, 3.0, -2.0]).view(4, 1, 1, 1))
    assert susceptibility_ranking(conv).tolist() == [1, 2, 3, 0]


def test_fru_shapes_and_identity_at_init() -> None:
    unit = FeatureRegenerationUnit(6, hidden=4).eval()
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(unit(x), x)
    model = _user_model()
    defended = add_regeneration(model, ["0", "2"])
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(defended(x), model(x))
    wrapped = defended[0]
    assert isinstance(wrapped, RegeneratedConv) and wrapped.selected.numel() == 3  # ⌊6/2⌋
    assert wrapped.fru.body[0].in_channels == 3 and wrapped.fru.body[-1].out_channels == 3


def test_only_frus_train_and_the_baseline_stays_fixed() -> None:
    model = _user_model()
    defended = add_regeneration(model, ["2"])
    trainable = [p for p in defended.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in fru_parameters(defended)}
    frozen_before = {k: v.clone() for k, v in defended.state_dict().items() if ".fru." not in k}
    optimiser = torch.optim.SGD(fru_parameters(defended), lr=0.5)
    fru_train_mode(defended)
    for _ in range(3):
        loss = defended(torch.rand(4, 1, 8, 8)).pow(2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    for key, value in defended.state_dict().items():
        if key in frozen_before:
            torch.testing.assert_close(value, frozen_before[key], rtol=0, atol=0)
    assert all(p.requires_grad for p in model.parameters())  # the original is untouched
    untouched = _user_model()
    torch.testing.assert_close(model[0].weight, untouched[0].weight)


def test_bad_layer_names_are_clear_errors() -> None:
    with pytest.raises(RobustlabError, match="not a Conv2d layer"):
        add_regeneration(_user_model(), ["6"])
    with pytest.raises(RobustlabError, match="at least one layer"):
        add_regeneration(_user_model(), [])
    assert conv_layers(_user_model()) == ["0", "2"]


def test_restoration_accuracy_by_hand() -> None:
    assert restoration_accuracy(0.9, 0.6, 0.9) == pytest.approx(1.5 / 1.8)
    assert restoration_accuracy(0.8, 0.8, 0.8) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        restoration_accuracy(0.5, 0.5, 0.0)


def test_synthesised_perturbations_have_norm_xi() -> None:
    generator = torch.Generator().manual_seed(0)
    parts = [torch.randn(1, 4, 4) for _ in range(3)]
    mixed = synthesise(parts, 10 / 255, generator)
    assert mixed.abs().max() == pytest.approx(10 / 255)


def test_sfr_cli_train_eval_and_round_trip(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["sfr", "layers", str(digits_run)]) == 0
    listed = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    layers = [row[0] for row in listed]
    assert [row[0] for row in listed if row[-1] == "auto"] == auto_layers(load(digits_run))
    out = tmp_path / "sfr"
    args = ["sfr", "train", str(digits_run), "--layers", ",".join(layers[:2]), "--uaps", "1"]
    args += ["--attack-images", "32", "--train-limit", "96", "--epochs", "1", "--xi", "30"]
    assert main([*args, "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert "loss per epoch" in capsys.readouterr().out
    base, defended, meta = load_sfr(out)
    assert meta["layers"] == layers[:2] and meta["xi"] == pytest.approx(30 / 255)
    again = load_sfr(out)[1]
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(defended(x), again(x))
    assert not torch.allclose(defended(x), base(x))  # trained FRUs change the features
    ev = ["sfr", "eval", str(out), "--attack", "fff", "--xi", "30", "--n", "64", "--device", "cpu"]
    assert main(ev) == 0
    table = capsys.readouterr().out
    assert "| baseline |" in table and "| defended |" in table
    assert list((out / "perturbations").glob("fff-*.safetensors"))
    imported = tmp_path / "imported.safetensors"
    UniversalPerturbation(torch.full((1, 8, 8), 20 / 255), {"attack": "imported"}).save(imported)
    assert main([*ev, "--perturbation", str(imported)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("file:imported.safetensors ℓ∞=20/255 ℓ2=160/255 against the imported")
    wrong = tmp_path / "wrong.safetensors"
    UniversalPerturbation(torch.zeros(3, 8, 8)).save(wrong)
    assert main([*ev, "--perturbation", str(wrong)]) == 2
    assert "the images are (1, 8, 8)" in capsys.readouterr().err
    image = tmp_path / "digit.png"
    pixels = load_dataset("digits", "test").images[0, 0]
    Image.fromarray(pixels).resize((16, 16)).save(image)  # resized back to 8 × 8 on input
    one = ["sfr", "eval", str(out), "--attack", "fff", "--xi", "30", "--input", str(image)]
    for state in ("on", "off"):
        assert main([*one, "--defense", state, "--device", "cpu"]) == 0
        line = capsys.readouterr().out
        assert line.startswith(f"defense {state}: clean -> ") and "fff ξ=30/255 -> " in line
    # --input with --perturbation: that file is added (it used to compute the default UAP)
    computed = len(list((out / "perturbations").glob("*.safetensors")))
    assert main([*one, "--perturbation", str(imported), "--device", "cpu"]) == 0
    assert "imported.safetensors (ℓ∞ 20/255) -> " in capsys.readouterr().out
    assert len(list((out / "perturbations").glob("*.safetensors"))) == computed
    assert main([*one, "--perturbation", str(wrong), "--device", "cpu"]) == 2
    assert "the images are (1, 8, 8)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sfr", "train", str(digits_run), "--layers", "", "--out", str(tmp_path / "x")])


def test_sfr_caches_follow_their_settings(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from robustlab.attacks.universal import UniversalPerturbation

    out = tmp_path / "sfr"
    common = [
        "sfr",
        "train",
        str(digits_run),
        "--uaps",
        "1",
        "--attack",
        "fff",
        "--attack-images",
        "16",
        "--train-limit",
        "64",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main([*common, "--layers", "nope", "--xi", "4"]) == 2
    assert "'nope' is not a Conv2d" in capsys.readouterr().err
    assert not (out / "perturbations").exists()  # refused before any attack ran
    layer = conv_layers(load_sfr_base(digits_run))[0]
    assert main([*common, "--layers", layer, "--xi", "4"]) == 0
    assert main([*common, "--layers", layer, "--xi", "40", "--force"]) == 0
    (cached,) = (out / "perturbations").glob("train-*.safetensors")
    assert UniversalPerturbation.load(cached).delta.abs().max() > 5 / 255  # ξ = 40, not 4
    ev = [
        "sfr",
        "eval",
        str(out),
        "--attack",
        "fff",
        "--xi",
        "30",
        "--n",
        "16",
        "--against",
        "defended",
        "--device",
        "cpu",
    ]
    assert main(ev) == 0
    first = set((out / "perturbations").glob("fff-*defended*"))
    assert main([*common, "--layers", layer, "--xi", "40", "--force"]) == 0  # FRUs retrained
    assert main(ev) == 0
    # a new perturbation against the new FRUs (the old one was removed with --force)
    assert set((out / "perturbations").glob("fff-*defended*")) != first


def load_sfr_base(run: Path) -> nn.Module:
    import robustlab

    return robustlab.load(run)


def test_an_interrupted_sfr_train_rerun_with_other_images_recomputes_its_perturbations(
    digits_run: Path, tmp_path: Path
) -> None:
    """#26 class 5: the perturbation files are named by the images they were made on (and
    the base weights), so other --attack-images or --train-limit never reuse them."""
    out = tmp_path / "sfr"
    layer = conv_layers(load_sfr_base(digits_run))[0]
    common = ["sfr", "train", str(digits_run), "--layers", layer, "--uaps", "1", "--attack"]
    common += ["fff", "--epochs", "1", "--out", str(out), "--device", "cpu", "--quiet"]
    assert main([*common, "--attack-images", "16", "--train-limit", "64"]) == 0
    (out / "meta.json").unlink()  # as if killed before the end: no meta.json, files kept
    (out / "defense.json").unlink()
    assert main([*common, "--attack-images", "24", "--train-limit", "64"]) == 0
    assert len(list((out / "perturbations").glob("train-0-*.safetensors"))) == 2
    stamp = {p: p.stat().st_mtime_ns for p in (out / "perturbations").glob("train-0-*")}
    (out / "meta.json").unlink()
    (out / "defense.json").unlink()
    assert main([*common, "--attack-images", "24", "--train-limit", "64"]) == 0  # same: reused
    assert {p: p.stat().st_mtime_ns for p in (out / "perturbations").glob("train-0-*")} == stamp


def test_a_defense_folder_is_keyed_by_the_spec_seed() -> None:
    """#26 class 5: ``prepare`` draws its subsets with the spec's seed."""
    from robustlab.experiments.models import ModelStore
    from robustlab.experiments.spec import parse_spec

    def identity(seed: int) -> list[str]:
        raw = {
            "experiment": {"dataset": "digits", "seed": seed, "n": 8},
            "train": {"arch": "lenet", "width": 4, "seed": 0},
            "models": {"standard": {}, "jpeg": {"base": "standard", "purify": {"jpeg": 75}}},
            "protocols": [{"type": "noise", "models": ["jpeg"], "sigmas": [8]}],
        }
        store = ModelStore(
            parse_spec(raw), Path("unused"), torch.device("cpu"), timings=None, indices=None
        )
        return store.identity("jpeg")

    assert identity(0) != identity(1) and identity(1) != identity(2)
    assert identity(0) == identity(0)

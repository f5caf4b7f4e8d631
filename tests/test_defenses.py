"""The Defense contract: every defense kind through every protocol, BPDA/EOT mechanics, the
gradient-masking flags, defended entries in specs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustlab.assemble import ModelConfig, create
from robustlab.attacks.universal import UniversalPerturbation
from robustlab.defenses.base import (
    Defended,
    ExpectationOverTransformation,
    Surface,
    attack_view,
    surface_of,
)
from robustlab.defenses.csc.dictionary import LearnedDictionary, random_dictionary, save_dictionary
from robustlab.defenses.regeneration import auto_layers
from robustlab.defenses.registry import defense_from_table
from robustlab.defenses.training_time import (
    AdversarialTraining,
    DefectMasks,
    LabelSmoothing,
    SpatialDropout,
    Thermometer,
    defenses_of,
    model_with,
)
from robustlab.defenses.transforms import BitDepthReduction, JPEGCompression, Median
from robustlab.evaluation.adaptive import adaptive_attack
from robustlab.experiments.executor import run_spec
from robustlab.experiments.spec import load_spec, parse_spec
from robustlab.models import build
from robustlab.report import write_report
from robustlab.report.robustbench import check_card
from tests.files import CHROMIUM, chromium, without_timing

SPEC = Path(__file__).parent / "specs" / "defenses.toml"
TRAINING_TIME = ("defective", "dropout", "smoothing", "adversarial", "thermometer")
DEFENDED = {
    "jpeg": "bpda",
    "bits": "bpda",
    "median": "differentiable",
    "csc": "bpda",
    "sfr": "differentiable",
    "thermometer": "bpda",
}


@pytest.fixture(scope="module")
def defenses_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("defenses")
    save_dictionary(root / "dict", LearnedDictionary(random_dictionary(8, 1, 3, seed=0), 0.1))
    spec = root / "spec.toml"
    UniversalPerturbation(torch.full((1, 8, 8), 24 / 255)).save(root / "p.safetensors")
    text = SPEC.read_text().replace("DICTIONARY", str(root / "dict"))
    spec.write_text(text.replace("PERTURBATION", str(root / "p.safetensors")))
    records = run_spec(load_spec(spec), root / "results", device="cpu", quiet=True)
    return root / "results", records


def test_every_defense_kind_through_every_protocol(defenses_run) -> None:
    results, records = defenses_run
    seen = {(r["protocol"], r.get("target")) for r in records}
    for model in [*DEFENDED, *TRAINING_TIME]:
        for protocol in ("transfer", "adaptive", "summary"):
            assert (protocol, model) in seen, (protocol, model)
    assert {("universal", m) for m in ("standard", "jpeg", "csc", "sfr")} <= seen
    assert {("whitebox", m) for m in ("jpeg", "csc", "sfr")} <= seen
    assert {("decision", m) for m in ("jpeg", "sfr")} <= seen
    noise = next(r for r in records if r["protocol"] == "noise")
    assert {"jpeg", "csc", "sfr", "defective"} <= set(noise["curves"])
    for r in (r for r in records if r["protocol"] == "adaptive"):
        assert r["surface"] == DEFENDED.get(r["target"], "differentiable")
        assert 0 <= r["accuracy"]["hits"] <= r["clean_accuracy"]["n"]
    thermometer = next(
        r for r in records if r["protocol"] == "adaptive" and r["target"] == "thermometer"
    )
    # its encoding declares BPDA: the adaptive attack follows the ramps, not zero gradients
    assert thermometer["zero_gradient_share"] == 0 and "zero_gradients" not in thermometer["flags"]
    plain = next(r for r in records if r["protocol"] == "whitebox" and r["target"] == "standard")
    assert "zero_gradients" not in plain["flags"]
    summary = {r["target"]: r for r in records if r["protocol"] == "summary"}
    assert summary["sfr"]["added_parameters"] > 0 and summary["jpeg"]["added_parameters"] == 0
    assert summary["csc"]["cost_ratio"] > 1  # purification costs more than the classifier
    universal = [r for r in records if r["protocol"] == "universal"]
    computed = [r for r in universal if r["against"] != "imported"]
    assert all(r["linf"] <= 16 / 255 + 1e-6 for r in computed)  # the spec's ξ = 16
    assert {r["against"] for r in universal} == {"base", "defended", "imported"}
    imported = [r for r in universal if r["against"] == "imported"]
    assert {r["target"] for r in imported} == {"standard", "sfr"}
    assert all(
        r["xi"] == pytest.approx(24) and r["attack"] == "file:p.safetensors" for r in imported
    )
    csc_dir = next((results / "defenses").glob("csc-*"))
    assert list(csc_dir.glob("purified-test-*/*.safetensors"))  # its test accuracy: purified
    sfr = json.loads(next((results / "defenses").glob("sfr-*/defense.json")).read_text())
    assert sfr["chosen_layers"] and sfr["xi"] == pytest.approx(16 / 255)
    strong = [r for r in records if r["protocol"] == "strong"]
    assert {(r["target"], r["eps"], r["headline"]) for r in strong} == {
        (m, eps, eps == 16) for m in ("standard", "jpeg", "thermometer") for eps in (16, 4)
    }
    assert all(
        r["accuracy"]["n"] == 16 and list(r["after"]) == ["apgd-ce", "apgd-t", "square"]
        for r in strong
    )
    assert len(list((results / "strong").glob("*/square.safetensors"))) == len(strong)
    for r in strong:  # counted per attack: APGD differentiates, Square queries
        assert r["cost"]["forward"] > 0 and r["cost"]["seconds"] > 0
        by_attack = r["cost_by_attack"]
        assert by_attack["apgd-ce"]["backward"] > 0 and by_attack["square"]["backward"] == 0
        assert r["cost"]["forward"] >= sum(c["forward"] for c in by_attack.values())
    assert [r["protocol"] for r in records if "cost" not in r or "units" not in r] == []
    # what several cells read, made once, is counted once, in its own cost (#27)
    for r in (r for r in records if r["protocol"] == "transfer"):
        made = r["shared_cost"]["adversarial_set"]
        assert made["forward"] > 0 and made["forward"] != r["cost"]["forward"]
    for r in computed:
        assert r["shared_cost"]["perturbation"]["forward"] > 0
    assert all("shared_cost" not in r for r in imported)  # a file: its cost is not known
    assert records[0]["units"]["params, config"].startswith("the library's [0, 1]")
    jpeg_whitebox = next(
        r for r in records if r["protocol"] == "whitebox" and r["target"] == "jpeg"
    )
    assert "zero_gradients" in jpeg_whitebox["flags"]  # plain gradients through JPEG: zero
    curve = next(r for r in records if r["protocol"] == "curve")
    assert set(curve["curves"]) == {"standard", "median"} and curve["resolution"] == 4
    for row in curve["curves"].values():
        hits = [row[level]["hits"] for level in ("4.0", "8.0", "16.0", "32.0")]
        assert hits == sorted(hits, reverse=True)
    success_files = sorted((results / "curves").glob("*.npz"))
    assert len(success_files) == 2
    with np.load(success_files[0], allow_pickle=False) as saved:
        assert saved["success"].shape == (4, 16) and list(saved["eps"]) == [4, 8, 16, 32]
    cards = {p.stem: json.loads(p.read_text()) for p in (results / "robustbench").glob("*.json")}
    assert set(cards) == {r["target"] for r in records if r["protocol"] == "summary"}
    for card in cards.values():
        check_card(card)  # every documented field, with its type
    passes = {r["target"]: r["passes_per_image"] for r in records if r["protocol"] == "summary"}
    assert passes["standard"] == 1 and passes["csc"] == 1  # counted: one network pass each
    assert all(cards[name]["number_forward_passes"] == round(p) for name, p in passes.items())
    assert cards["jpeg"]["architecture"] == "jpeg on lenet" and cards["jpeg"]["eps"] == "16/255"
    strong_jpeg = next(r for r in strong if r["target"] == "jpeg" and r["headline"])
    assert cards["jpeg"]["autoattack_acc"] == f"{100 * strong_jpeg['accuracy']['rate']:.2f}"
    assert cards["csc"]["autoattack_acc"] is None and cards["csc"]["eps"] is None
    assert cards["defective"]["architecture"] == "lenet (defective 0.5)"
    defenses = {
        name: [d["defense"] for d in card["robustlab"]["defense"]] for name, card in cards.items()
    }
    assert defenses["defective"] == ["defect"] and defenses["jpeg"] == ["jpeg"]
    assert defenses["standard"] == [] and defenses["adversarial"] == ["adversarial_training"]
    table = (results / "results.md").read_text()
    assert table.startswith("## Comparison")
    for row in (
        "| csc | csc (bpda) |",
        "| median | median (differentiable) |",
        "| defective | defect bottom:0.5 |",
        "| adversarial | adversarial training 8/255 |",
        "| standard | — |",
    ):
        assert row in table, row
    assert "## Strong (AutoAttack-style)" in table and "## Robust accuracy against ε" in table
    assert all(f"| {m} |" in table.split("## Transfer")[0] for m in [*DEFENDED, "standard"])


def test_defended_models_load_back_identically(defenses_run, tmp_path: Path) -> None:
    results, records = defenses_run
    again = tmp_path / "again"
    shutil.copytree(results, again)
    shutil.rmtree(again / "records")  # every cell recomputed from the saved defenses
    spec_path = results.parent / "spec.toml"
    redone = run_spec(load_spec(spec_path), again, device="cpu", quiet=True)
    assert without_timing(redone) == without_timing(records)


class Quantized(nn.Module):
    """A classifier that rounds its input to 4 levels and does not say so."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(torch.round(x * 3) / 3)
        return out


def _plain(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


def test_bpda_replaces_the_declared_part_by_the_identity() -> None:
    classifier = _plain()
    model = Defended(classifier, Surface("bpda", "rounding"), BitDepthReduction(2))
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    (plain,) = torch.autograd.grad(model(x).sum(), x)
    assert torch.count_nonzero(plain) == 0  # rounding: an honest zero gradient
    (bpda,) = torch.autograd.grad(attack_view(model)(x).sum(), x)
    rounded = (BitDepthReduction(2)(x.detach())).requires_grad_(True)
    (expected,) = torch.autograd.grad(classifier(rounded).sum(), rounded)
    torch.testing.assert_close(bpda, expected)  # classifier's gradient at the transformed input
    torch.testing.assert_close(attack_view(model)(x), model(x))  # forward unchanged


class Jitter(nn.Module):
    """A randomized transform: uniform noise of ±0.1 from torch's global generator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (torch.rand_like(x) - 0.5) * 0.2


def test_eot_averages_over_the_randomness() -> None:
    model = Defended(_plain(), Surface("randomized", eot_samples=8), Jitter())
    view = attack_view(model)
    assert isinstance(view, ExpectationOverTransformation) and view.samples == 8
    x = torch.rand(3, 1, 8, 8)
    torch.manual_seed(5)
    averaged = view(x)
    torch.manual_seed(5)
    samples = torch.stack([model(x) for _ in range(8)])
    torch.testing.assert_close(averaged, samples.mean(0))
    assert not torch.equal(samples[0], samples[1])
    with pytest.raises(ValueError, match="at least one sample"):
        ExpectationOverTransformation(model, 0)


def test_masking_flag_on_an_input_quantizing_model_not_on_a_plain_one() -> None:
    plain = _plain(1)
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = plain(x).argmax(1)
    params = {"eps": 16 / 255, "step": 4 / 255, "steps": 10}
    honest = adaptive_attack(plain, x, y, "pgd", params)
    assert not honest.masking and honest.zero_gradient_share == 0 and honest.loss_rises
    masked = adaptive_attack(Quantized(plain), x, y, "pgd", params)
    assert masked.masking and "zero_gradients" in masked.flags
    assert masked.zero_gradient_share == 1.0
    declared = Defended(plain, Surface("bpda", "rounding"), BitDepthReduction(2))
    through = adaptive_attack(declared, x, y, "pgd", params, base=plain)
    assert "zero_gradients" not in through.flags and through.surface == "bpda"


def test_transforms() -> None:
    ramp = torch.linspace(0, 1, 16)
    x = (ramp.view(1, 1, 1, 16) * ramp.view(1, 1, 16, 1)).expand(2, 3, 16, 16).contiguous()
    jpeg = JPEGCompression(50)(x)  # a smooth image: JPEG keeps it close, but not exact
    assert jpeg.shape == x.shape and 0 < (jpeg - x).abs().mean() < 0.05
    grey = JPEGCompression(90)(x[:, :1])
    assert grey.shape == (2, 1, 16, 16)
    assert set((BitDepthReduction(1)(x) * 1).unique().tolist()) <= {0.0, 1.0}
    flat = torch.full((1, 1, 5, 5), 0.5)
    flat[0, 0, 2, 2] = 1.0  # one outlier: the median removes it
    torch.testing.assert_close(Median(3)(flat), torch.full_like(flat, 0.5))
    for make, message in (
        (lambda: JPEGCompression(0), "quality"),
        (lambda: BitDepthReduction(9), "bit depth"),
        (lambda: Median(4), "odd"),
    ):
        with pytest.raises(ValueError, match=message):
            make()


def test_auto_layers_pick_the_first_conv_of_the_first_stages() -> None:
    model = build("resnet8", in_channels=1, image_size=28, width=4)
    layers = auto_layers(model)
    assert len(layers) == 3 and all(
        name.startswith(f"blocks.{i}.") for i, name in enumerate(layers)
    )
    generic = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 8, 3, 2))
    assert auto_layers(generic) == ["0", "2"]


BASE = {
    "experiment": {"dataset": "digits"},
    "models": {"standard": {}},
    "attacks": {"pgd": {"attack": "pgd", "eps": 8}, "boundary": {"attack": "boundary"}},
}


@pytest.mark.parametrize(
    "models, protocols, message",
    [
        (
            {"d": {"base": "standard", "purify": {"jpeg": 75, "bits": 3}}},
            [],
            r"\[models.d\] purify needs exactly one of",
        ),
        (
            {"d": {"base": "standard", "purify": {"jpeg": 75, "qualty": 3}}},
            [],
            r"\[models.d\] purify: unknown key 'qualty'",
        ),
        (
            {"d": {"base": "nope", "purify": {"jpeg": 75}}},
            [],
            r"\[models.d\] base 'nope' is not a trained model",
        ),
        (
            {"d": {"base": "standard", "purify": {"jpeg": 75}, "epochs": 3}},
            [],
            r"\[models.d\] unknown key 'epochs'",
        ),
        ({"d": {"base": "standard", "regenerate": {"xi": 300}}}, [], r"xi must be in \(0, 255\]"),
        (
            {"d": {"base": "standard", "regenerate": {"attack": "fgsm"}}},
            [],
            "unknown universal attack 'fgsm'",
        ),
        ({"d": {"base": "standard", "purify": {"jpeg": "high"}}}, [], "quality must be an integer"),
        (
            {"d": {"base": "standard", "purify": {"jpeg": 75}}},
            [{"type": "transfer", "sources": ["d"], "targets": ["standard"], "attacks": ["pgd"]}],
            "may not name defended model 'd'",
        ),
        (
            {},
            [{"type": "adaptive", "models": ["standard"], "attacks": ["boundary"]}],
            "not a gradient attack",
        ),
        (
            {},
            [{"type": "universal", "models": ["standard"], "attacks": ["uap"], "xis": [0]}],
            "xis must be strengths",
        ),
        (
            {},
            [
                {
                    "type": "universal",
                    "models": ["standard"],
                    "attacks": ["uap"],
                    "options": {"uap": {"passes": 1}},
                }
            ],
            "options.uap",
        ),
    ],
)
def test_defended_spec_errors_name_the_key(models: dict, protocols: list, message: str) -> None:
    raw = {**BASE, "models": {**BASE["models"], **models}, "protocols": protocols}
    with pytest.raises(ValueError, match=message):
        parse_spec(raw)


def test_defense_tables_convert_units_once() -> None:
    raw = {
        **BASE,
        "models": {**BASE["models"], "d": {"base": "standard", "regenerate": {"xi": 10}}},
    }
    defense = parse_spec(raw).models["d"].defense
    assert defense is not None and defense.xi == pytest.approx(10 / 255)  # type: ignore[attr-defined]
    assert defense_from_table("purify", {"median": 3}).surface.kind == "differentiable"
    assert "quality=75" in repr(defense_from_table("purify", {"jpeg": 75}))


def test_training_time_defenses_are_typed_and_build_the_same_configs() -> None:
    entries = {
        "defective": {"defect": "bottom:0.1", "mask_seed": 3},
        "dropout": {"regularizer": "dropblock"},
        "thermo": {"thermometer": 8},
        "both": {"label_smoothing": 0.1, "adv_train": "8:2:5"},
    }
    models = parse_spec({**BASE, "models": entries}).models
    kinds = {name: [type(d) for d in entry.training] for name, entry in models.items()}
    assert kinds == {
        "defective": [DefectMasks],
        "dropout": [SpatialDropout],
        "thermo": [Thermometer],
        "both": [LabelSmoothing, AdversarialTraining],
    }
    # the configs they build are those runs have always been keyed by
    both = models["both"]
    assert both.train.adv_eps == 0 and both.train.label_smoothing == 0  # the plain recipe
    recipe = both.recipe()
    assert (recipe.adv_eps, recipe.adv_step, recipe.adv_steps) == (8 / 255, 2 / 255, 5)
    assert recipe.label_smoothing == 0.1 and both.defense_text() == (
        "label smoothing 0.1, adversarial training 8/255"
    )
    plain = ModelConfig("resnet8", in_channels=1, image_size=28)
    for entry in models.values():
        config = model_with(entry.training, plain)
        assert defenses_of(config, entry.recipe()) == entry.training  # read back from a run
    defect = model_with(models["defective"].training, plain).defect
    assert defect is not None and (defect.keep_prob, defect.seed) == (0.1, 3)
    # surfaces: only the thermometer's encoding needs BPDA, and it matches the loaded model's
    surfaces = {n: [d.surface.kind for d in e.training] for n, e in models.items()}
    assert surfaces["thermo"] == ["bpda"] and surfaces["both"] == ["differentiable"] * 2
    thermo = create(model_with(models["thermo"].training, plain))
    assert surface_of(thermo) == models["thermo"].training[0].surface
    assert all(d.kind == "training" for e in models.values() for d in e.training)
    assert repr(models["dropout"].training[0]) == (
        "SpatialDropout(method='dropblock', block=3, keep=0.9)"
    )


def test_list_names_every_defense_by_kind(capsys: pytest.CaptureFixture[str]) -> None:
    from robustlab.cli import main
    from robustlab.defenses.registry import PURIFIERS, TRAINING_KEYS

    assert main(["list"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert set(lines["training defenses (spec keys)"].split(", ")) == set(TRAINING_KEYS)
    purify = {f"purify.{k}" for k in PURIFIERS}
    assert set(lines["input defenses (spec keys)"].split(", ")) == purify


def test_the_command_line_and_specs_build_the_same_training_defenses() -> None:
    from robustlab.cli import _training_defenses, build_parser

    args = build_parser().parse_args(
        [
            "train",
            "--dataset",
            "digits",
            "--arch",
            "lenet",
            "--out",
            "unused",
            "--defect",
            "bottom:0.1",
            "--mask-seed",
            "3",
            "--regularizer",
            "dropblock",
            "--thermometer",
            "8",
            "--label-smoothing",
            "0.1",
            "--adv-train",
            "8:2:5",
        ]
    )
    entry = {
        "defect": "bottom:0.1",
        "mask_seed": 3,
        "regularizer": "dropblock",
        "thermometer": 8,
        "label_smoothing": 0.1,
        "adv_train": "8:2:5",
    }
    from_spec = parse_spec({**BASE, "models": {"m": entry}}).models["m"].training
    assert _training_defenses(args) == from_spec and len(from_spec) == 5


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"adv_train": "8:2"}, r"\[models.m\] adv_train must be \"EPS:STEP:STEPS\""),
        ({"adv_train": "0:2:5"}, r"\[models.m\] adversarial training needs 0 < eps"),
        ({"thermometer": 1}, r"\[models.m\] thermometer levels 1 must be at least 2"),
        ({"thermometer": "16"}, r"\[models.m\] thermometer must be an integer"),
        ({"regularizer": "dropout"}, r"\[models.m\] unknown regularizer 'dropout'"),
        ({"label_smoothing": 1.5}, r"\[models.m\] label smoothing 1.5 must be in \(0, 1\)"),
        ({"label_smoothing": "a"}, r"\[models.m\] label_smoothing must be a number"),
    ],
)
def test_training_time_errors_name_the_key(entry: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spec({**BASE, "models": {"m": entry}})


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
def test_the_report_opens_with_the_comparison_in_chromium(defenses_run, tmp_path: Path) -> None:
    results, _ = defenses_run
    page = write_report(results, tmp_path / "report.html")
    dom = chromium(page.resolve().as_uri(), tmp_path / "profile", "--dump-dom").stdout
    headings = re.findall(r"<h2[^>]*>([^<]+)", dom)
    assert headings[0] == "Comparison of defenses"
    assert {
        "Adaptive white-box attacks",
        "Universal perturbations",
        "Gallery: csc: what the purifier does",
        "Gallery: sfr: a universal perturbation of standard",
    } <= set(headings)
    first_table = dom.split("<table>")[1].split("</table>")[0]
    assert all(f"#spec-models-{m}" in first_table for m in [*DEFENDED, "standard"])

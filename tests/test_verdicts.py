"""Verdicts (#25): the worst case per image, the checks that decide the status, the
escalation that runs their remedies, resuming, and the `robustlab evaluate` front door.

Each escalation path is driven by a small model built to trip one check: probabilities
instead of logits (resolved by attacking their log), a transform run without autograd that
has an exact implementation (resolved through it), quantised inputs with no gradient at all
(unreliable), a randomized model (EOT and majority scoring)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import robustlab
from robustlab.defenses.base import Defended, Surface, ZeroGradient
from robustlab.evaluation import ladder
from robustlab.evaluation.binarization import binarization_test
from robustlab.evaluation.escalation import Evaluation, evaluate
from robustlab.evaluation.verdict import EvaluationConfig
from robustlab.evaluation.worst_case import WorstCase
from tests.files import CHROMIUM, chromium

ROOT = Path(__file__).parents[1]
# small budgets: every path of the ladder in seconds on two cores
SMALL = {"steps": 10, "queries": 100, "target_classes": 3, "probe": 16}


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained on scikit-learn's digits, and 48 test images."""
    torch.manual_seed(0)
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(data.target)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(10):
        for i in range(0, 1500, 64):
            loss = nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), x[1500:1548], y[1500:1548]


class Softmaxed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(1)


class Quantised(nn.Module):
    """Inputs rounded to 4 levels: no gradient anywhere, no exact implementation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x * 4).round() / 4 + 0 * x)


class Blur(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, 3, stride=1, padding=1)


class Noisy(nn.Module):
    """Gaussian noise on the input at every pass: a randomized defense."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + 0.3 * torch.randn_like(x)).clamp(0, 1))


class _Reversed(torch.autograd.Function):
    """Identity forward, negated gradient backward."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return -grad


class Misleading(nn.Module):
    """Gradients that point the wrong way (nonzero, so the gradient checks pass): every
    gradient attack descends the loss, and Square, which needs no gradient, does better."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_Reversed.apply(x))


def test_worst_case_counts_each_image_once_and_names_its_first_breaker() -> None:
    worst = WorstCase(torch.tensor([True, True, True, False]))
    assert worst.add("a", "white", torch.tensor([True, False, False, True])) == 1
    assert worst.add("b", "black", torch.tensor([True, True, False, False])) == 1
    assert worst.robust.tolist() == [False, False, True, False]
    assert worst.first_breakers() == {"a": 1, "b": 1}
    assert worst.breaker_of() == ["a", "b", "", ""]  # a wrong clean image is nobody's
    assert worst.by("black").tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="recorded twice"):
        worst.add("a", "white", torch.zeros(4, dtype=torch.bool))


def test_a_plain_model_is_reliable_and_its_number_is_the_worst_case(digits) -> None:
    model, x, y = digits
    verdict = evaluate(model, x, y, eps=0.1, **SMALL)
    assert verdict.status == "reliable", verdict.failing
    assert verdict.fired == () and not verdict.failing
    assert [s.name for s in verdict.steps[:4]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    broken = verdict.clean.hits - verdict.robust.hits
    assert broken > 5 and sum(verdict.first_breakers.values()) == broken
    assert sum(1 for b in verdict.breaker if b) == broken
    # the robust images are exactly those no counted step broke
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).tolist()
    assert [bool(c) and not b for c, b in zip(correct, verdict.breaker, strict=True)].count(
        True
    ) == verdict.robust.hits
    record = json.loads(json.dumps(verdict.to_dict()))  # strict JSON
    assert record["upper_bound"] is True and record["status"] == "reliable"


def test_probability_outputs_are_resolved_by_attacking_their_log(digits) -> None:
    model, x, y = digits
    verdict = evaluate(Softmaxed(model), x, y, eps=0.1, **SMALL)
    assert "probability_outputs" in verdict.fired
    assert any(s.name.startswith("log-outputs:") for s in verdict.steps)
    assert verdict.status in ("resolved", "unreliable")
    assert next(c for c in verdict.checks if c.name == "probability_outputs").passed


def test_a_hidden_gradient_is_resolved_through_the_exact_implementation(digits) -> None:
    model, x, y = digits
    defended = Defended(model, Surface(), ZeroGradient(Blur()))
    verdict = evaluate(defended, x, y, eps=0.1, **SMALL)
    assert "unavailable_gradients" in verdict.fired
    exact = [s for s in verdict.steps if s.surface == "exact"]
    assert exact and exact[0].reason  # the remedy says which check called it
    assert next(c for c in verdict.checks if c.name == "unavailable_gradients").passed
    assert verdict.escalation_broke > 0  # the exact gradients find what none did before
    assert verdict.status == "resolved", verdict.failing


def test_square_with_doubled_queries_is_asked_and_its_remedy_judged_at_the_full_budget(
    digits,
) -> None:
    """Whether more queries help is asked directly (Carlini et al. 2019, 5.2), not only when
    Square breaks an image the gradients left: Square with twice the queries on the probe's
    survivors, then the square-full rung, judged on the probe images the doubled one left."""
    model, x, y = digits
    plain = evaluate(model, x, y, eps=0.1, **SMALL)
    doubled = next(s for s in plain.steps if s.name == "square-doubled")
    assert doubled.params["queries"] == 2 * SMALL["queries"] and doubled.role == "black"
    assert 0 < doubled.attacked <= SMALL["probe"]
    check = next(c for c in plain.checks if c.name == "more_queries_do_not_help")
    assert check.passed and check.evidence["more_queries"] == 200  # nothing more broke
    defended = Defended(model, Surface(), ZeroGradient(Blur()))  # Square's wins keep coming
    verdict = evaluate(defended, x, y, eps=0.1, full_queries=1000, **SMALL)
    by_name = {s.name: s for s in verdict.steps}
    assert "more_queries_do_not_help" in verdict.fired and by_name["square-doubled"].new > 0
    assert "more_queries_do_not_help" in by_name["square-full"].reason
    judged = next(c for c in verdict.checks if c.name == "more_queries_do_not_help")
    assert judged.evidence["queries"] == 200 and judged.evidence["more_queries"] == 1000
    rand = evaluate(Noisy(model), x[:8], y[:8], eps=0.1, version="rand", eot_samples=2, **SMALL)
    assert not any(s.name.startswith("square") for s in rand.steps)  # no Square to double
    assert "more_queries_do_not_help" not in {c.name for c in rand.checks}


def test_no_gradient_and_no_remedy_is_unreliable_with_the_evidence(digits) -> None:
    model, x, y = digits
    verdict = evaluate(Quantised(model), x, y, eps=0.1, **SMALL)
    assert verdict.status == "unreliable"
    assert verdict.deciding == "unavailable_gradients"
    assert "escalation tried" in verdict.advice and "square-full" in verdict.advice
    assert "unreliable: unavailable_gradients fails" in verdict.summary()


def test_a_randomized_model_is_attacked_with_eot_and_scored_by_majority(digits) -> None:
    model, x, y = digits
    torch.manual_seed(0)
    verdict = evaluate(Noisy(model), x[:24], y[:24], eps=0.1, eot_samples=4, passes=5, **SMALL)
    assert "randomized" in verdict.fired
    gradient_steps = [s for s in verdict.steps if s.attack == "apgd"]
    assert all(s.params.get("eot_samples") == 4 for s in gradient_steps)


def test_a_model_with_few_classes_drops_what_it_cannot_take(digits) -> None:
    model, x, y = digits
    three = nn.Sequential(model, nn.Linear(10, 3))
    keep = y < 3
    verdict = evaluate(three, x[keep], y[keep], eps=0.1, **SMALL)
    assert "number_of_classes" in verdict.fired
    assert not any(s.name in ("apgd-t", "fab-t") for s in verdict.steps)
    assert next(c for c in verdict.checks if c.name == "number_of_classes").passed


def test_the_binarization_test_passes_a_working_attack_and_fails_a_blind_one(digits) -> None:
    model, x, _ = digits
    working = binarization_test(model, model, x[:16], eps=0.1, norm="linf", steps=20)
    no_gradient = nn.Sequential(ZeroGradient(nn.ReLU()), model)  # a copy of x: no gradient
    blind = binarization_test(model, no_gradient, x[:16], eps=0.1, norm="linf", steps=20)
    assert working.evidence["valid_images"] > 0 and working.passed
    assert blind.evidence["valid_images"] == working.evidence["valid_images"]
    assert not blind.passed and blind.evidence["broken"] < working.evidence["broken"]


def test_a_resumed_evaluation_reuses_every_step_and_gives_the_same_verdict(
    digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x, y = digits
    first = evaluate(Softmaxed(model), x, y, eps=0.1, store=tmp_path, **SMALL)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr("robustlab.evaluation.escalation.attack_in_batches", refuse)
    again = evaluate(Softmaxed(model), x, y, eps=0.1, store=tmp_path, **SMALL)
    strip = lambda v: {**v.to_dict(), "steps": [s.name for s in v.steps]}  # noqa: E731
    assert strip(again) == strip(first)
    # each step's counted cost is kept with it and read back, not measured again as zero
    assert [s.cost for s in again.steps] == [s.cost for s in first.steps]
    attacked = [s for s in first.steps if s.attacked]
    assert attacked and all(s.cost["forward"] >= s.attacked for s in attacked)
    assert any(s.cost["backward"] > 0 for s in attacked)


def test_black_box_beating_the_gradients_climbs_the_rungs_it_calls_for(digits) -> None:
    """Square beats gradients that point the wrong way: the ladder runs Square at the full
    queries, then APGD from the black-box adversarials, each step naming the check that
    called it; what no gradient can fix (the ε = 1 attack fails) leaves it unreliable."""
    model, x, y = digits
    verdict = evaluate(Misleading(model), x, y, eps=0.1, full_queries=400, **SMALL)
    assert "square_beats_gradients" in verdict.fired
    assert next(c for c in verdict.checks if c.name == "unavailable_gradients").passed
    by_name = {s.name: s for s in verdict.steps}
    for rung in ("square-full", "from-black-box"):
        assert "square_beats_gradients" in by_name[rung].reason, [s.name for s in verdict.steps]
    assert by_name["square-full"].params["queries"] == 400
    starts = str(by_name["from-black-box"].params["start"]).split("+")
    assert "square-full" in starts and all(by_name[s].role == "black" for s in starts)
    # started from Square's adversarials, the white-box attack keeps every image they broke
    square_broke = sum(by_name[s].new for s in ("square", "square-full"))
    assert square_broke > 0 and by_name["from-black-box"].broke >= square_broke
    assert next(c for c in verdict.checks if c.name == "square_beats_gradients").passed
    assert by_name["more-steps:apgd-ce"].params["steps"] == 2 * SMALL["steps"]
    assert verdict.status == "unreliable" and verdict.deciding == "unconstrained_attack_failure"


def test_the_targeted_rung_attacks_every_other_class(digits) -> None:
    model, x, y = digits
    evaluation = Evaluation(model, x[:24], y[:24], EvaluationConfig(eps=0.1, **SMALL))
    evaluation.run()
    targeted = next(rung for rung in ladder.LADDER if rung.name == "targeted")
    assert ladder.climb(evaluation, targeted, 1, reason="white_box_beats_black_box")
    step = evaluation.steps[-1]
    assert step.name == "targeted" and step.reason == "white_box_beats_black_box"
    assert step.params["target_classes"] == 9 and step.attack == "apgdt"
    three = Evaluation(
        nn.Sequential(model, nn.Linear(10, 3)), x[:8], y[:8] % 3, EvaluationConfig(eps=0.1, **SMALL)
    )
    assert not ladder.climb(three, targeted, 1, reason="")  # 3 classes: nothing to target


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_the_plus_version_runs_autoattacks_six_attacks_in_its_order(digits, norm, eps) -> None:
    model, x, y = digits
    verdict = evaluate(model, x[:24], y[:24], eps=eps, norm=norm, version="plus", **SMALL)
    plan = [s.name for s in verdict.steps[:6]]
    assert plan == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert all(s.params["norm"] == norm and s.params["eps"] == eps for s in verdict.steps[:6])
    assert verdict.config.version == "plus" and verdict.to_dict()["config"]["norm"] == norm


def test_the_rand_version_attacks_with_eot_and_scores_over_several_passes(digits) -> None:
    """``rand`` (AutoAttack's version for randomized defenses): APGD-CE and APGD-DLR with
    EOT, even on a model the randomness check calls deterministic."""
    model, x, y = digits
    verdict = evaluate(model, x[:24], y[:24], eps=0.1, version="rand", eot_samples=3, **SMALL)
    assert [s.name for s in verdict.steps[:2]] == ["apgd-ce", "apgd-dlr"]
    assert all(s.params.get("eot_samples") == 3 for s in verdict.steps[:2])
    assert "randomized" not in verdict.fired


def test_a_model_that_gets_nothing_right_has_an_exact_zero(digits) -> None:
    model, x, y = digits
    wrong = nn.Sequential(model, nn.Linear(10, 10))
    with torch.no_grad():
        wrong[1].weight.copy_(torch.eye(10).roll(1, 0))
        wrong[1].bias.zero_()
    verdict = evaluate(wrong, x, y, eps=0.1, **SMALL)
    assert verdict.clean.hits == 0 and verdict.robust.hits == 0 and not verdict.steps


def test_an_evaluation_leaves_the_model_as_it_found_it() -> None:
    """Eval mode and BatchNorm statistics untouched, whatever the ladder wrapped around it
    (a readout or log-outputs module in training mode once handed that mode down)."""
    from tests.factories import tiny_cnn

    torch.manual_seed(0)
    model = tiny_cnn(num_classes=10, in_channels=1).eval()
    x = torch.rand(24, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(Softmaxed(model).eval(), x, y, eps=0.1, **SMALL)
    assert not model.training and not any(m.training for m in model.modules())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_the_facade_and_config_errors() -> None:
    assert robustlab.evaluate is evaluate
    with pytest.raises(ValueError, match="version 'fast'"):
        EvaluationConfig(eps=0.1, version="fast")
    with pytest.raises(ValueError, match="budget 'huge'"):
        EvaluationConfig(eps=0.1, budget="huge")
    with pytest.raises(ValueError, match="steps=0"):
        EvaluationConfig(eps=0.1, steps=0)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests.factories:tiny_cnn trained briefly on digits (what --weights loads)."""
    from safetensors.torch import save_file

    from robustlab.data import load_dataset
    from tests.factories import tiny_cnn

    torch.manual_seed(0)
    x, y = load_dataset("digits", "train").tensors()
    net = tiny_cnn()
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(6):
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(net((x[i : i + 64] - 0.5) / 0.5), y[i : i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _evaluate_command(out: Path, weights: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "robustlab",
        "evaluate",
        "--model",
        "tests.factories:tiny_cnn",
        "--dataset",
        "digits",
        "--n",
        "24",
        "--steps",
        "5",
        "--queries",
        "50",
        "--target-classes",
        "3",
        "--weights",
        str(weights),
        "--out",
        str(out),
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_evaluate_command_writes_verdict_card_and_report_and_refuses_another_plan(
    tmp_path: Path, weights: Path
) -> None:
    out = tmp_path / "eval"
    done = subprocess.run(
        [*_evaluate_command(out, weights), "--report", "--quiet"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "robust accuracy" in done.stdout
    verdict = json.loads((out / "verdict.json").read_text())
    card = json.loads((out / "card.json").read_text())
    assert card["robustlab"]["status"] == verdict["status"]
    assert card["threat_model"] == "Linf" and card["eps"] == "8/255"
    assert float(card["clean_acc"]) > 50  # the weights were loaded
    assert float(card["autoattack_acc"]) <= float(card["clean_acc"])
    assert "Status:" in (out / "report.html").read_text()
    other = subprocess.run(
        [*_evaluate_command(out, weights, "--eps", "4"), "--quiet"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    assert other.returncode == 2 and "holds another evaluation (differs in config)" in other.stderr


def test_evaluate_command_on_a_trained_run(tmp_path: Path, digits_run: Path) -> None:
    """A run folder of `robustlab train`: its dataset comes from its meta.json, its own
    normalisation is part of the model, and the run itself serves as the transfer base."""
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "robustlab", "evaluate", "--model", str(digits_run)]
    command += ["--base", str(digits_run), "--n", "16", "--steps", "5", "--queries", "50"]
    command += ["--target-classes", "3", "--out", str(out), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    verdict = json.loads((out / "verdict.json").read_text())
    plan = verdict["plan"]
    assert plan["source"]["model"] == str(digits_run) and plan["source"]["sha256"]
    assert plan["dataset"] == "digits" and plan["base"] == str(digits_run)
    from robustlab.data import load_dataset, sample
    from robustlab.runs import load

    x, y = sample(load_dataset("digits", "test"), 16, 0).tensors()
    with torch.no_grad():
        logits = load(digits_run)(x)
    hits = int((logits.argmax(1) == y).sum())
    # two float32 code paths (here, and the command's batches) may order a near tie apart
    # on another CPU; everywhere else the command's clean hits are the run's own
    top = logits.topk(2, 1).values
    near_ties = int((top[:, 0] - top[:, 1] < 1e-4).sum())
    assert verdict["clean"]["n"] == 16
    assert abs(verdict["clean"]["hits"] - hits) <= near_ties  # the run's model
    steps = [step["name"] for step in verdict["steps"]]
    assert steps[:4] == ["apgd-ce", "apgd-t", "fab-t", "square"] and "transfer" in steps
    assert verdict["status"] in ("reliable", "resolved", "unreliable")


def test_evaluate_resumes_after_kill_9(tmp_path: Path, weights: Path) -> None:
    out = tmp_path / "eval"
    process = subprocess.Popen(
        [*_evaluate_command(out, weights), "--quiet"],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    steps = out / "steps"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(steps.glob("*.st"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = sorted(p.name for p in steps.glob("*.st"))
    assert kept and not (out / "verdict.json").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in steps.glob("*.st")}
    done = subprocess.run(
        [*_evaluate_command(out, weights), "--quiet"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert all((steps / name).stat().st_mtime_ns == stamps[name] for name in kept)  # reused
    fresh = tmp_path / "fresh"
    subprocess.run(
        [*_evaluate_command(fresh, weights), "--quiet"], check=True, env=_env(), cwd=ROOT
    )
    resumed = json.loads((out / "verdict.json").read_text())
    clean = json.loads((fresh / "verdict.json").read_text())
    for key in ("robust", "status", "breaker", "first_breakers", "fired"):
        assert resumed[key] == clean[key], key


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
def test_the_verdict_report_renders_in_headless_chromium(tmp_path: Path, weights: Path) -> None:
    out = tmp_path / "eval"
    subprocess.run(
        [*_evaluate_command(out, weights), "--report", "--quiet"], check=True, env=_env(), cwd=ROOT
    )
    dom = chromium((out / "report.html").as_uri(), tmp_path / "profile", "--dump-dom").stdout
    assert 'id="status"' in dom and "Checks" in dom and "apgd-ce" in dom


VERDICT_SPEC = """
[experiment]
dataset = "digits"
seed = 0
n = 32

[train]
arch = "lenet"
width = 4
epochs = 3
batch_size = 64
lr = 0.05
pad = 0
train_limit = 800

[models.standard]
[models.bits]
base = "standard"
purify = { bits = 2 }

[[protocols]]
type = "verdict"
models = ["standard", "bits"]
eps = 16
steps = 5
queries = 50
full_queries = 100
target_classes = 3
probe = 8
"""


def test_the_verdict_protocol_fills_the_comparison_table(tmp_path: Path) -> None:
    from robustlab.experiments.executor import run_spec
    from robustlab.experiments.spec import parse_spec, parse_toml
    from robustlab.report.tables import comparison_rows, markdown

    spec = parse_spec(parse_toml(VERDICT_SPEC))
    records = run_spec(spec, tmp_path / "results", device="cpu", quiet=True)
    verdicts = {r["target"]: r for r in records if r["protocol"] == "verdict"}
    assert set(verdicts) == {"standard", "bits"}
    bits = verdicts["bits"]
    assert bits["config"]["eps"] == pytest.approx(16 / 255) and bits["upper_bound"] is True
    assert any(s["name"] == "transfer" for s in bits["steps"])  # from its undefended base
    rows = {row.model: row for row in comparison_rows(records)}
    assert rows["bits"].verdict == bits["robust"]
    assert rows["bits"].status.startswith(bits["status"])
    text = markdown(records)
    assert "verdict (upper bound)" in text and "## Verdicts: worst case per image" in text
    again = run_spec(spec, tmp_path / "results", device="cpu", quiet=True)  # all cached
    assert [r for r in again if r["protocol"] == "verdict"] == list(verdicts.values())


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"eps": 0}, "eps = 0 must be a positive strength"),
        ({"version": "fast"}, "version 'fast' must be"),
        ({"steps": 0}, "steps=0 must be a positive integer"),
        ({"colour": "red"}, "unknown key 'colour'"),
    ],
)
def test_verdict_spec_errors_name_the_table(entry: dict, message: str) -> None:
    from robustlab.experiments.spec import parse_spec

    protocol = {"type": "verdict", "models": ["standard"], **entry}
    source = {"experiment": {"dataset": "digits"}, "models": {"standard": {}}}
    with pytest.raises(ValueError, match=r"\[\[protocols\]\] #1 \(verdict\).*" + message):
        parse_spec({**source, "protocols": [protocol]})


def test_a_robust_accuracy_of_zero_is_exact_whatever_a_check_says() -> None:
    """A check that fires on an attack that broke every image (silent success did, on the
    CIFAR-10 SFR model) says nothing about the number: 0 cannot be an overestimate."""
    from robustlab.evaluation.checks import Check
    from robustlab.evaluation.verdict import decide

    fired = Check("silent_success", False, {"images": 3}, "Pintor et al. 2022", "return the best")
    assert decide(("silent_success",), (fired,), [], robust=0) == {
        "status": "reliable",
        "deciding": "",
        "advice": "every image was broken, so 0 is exact (checks that failed: silent_success)",
    }
    assert decide(("silent_success",), (fired,), [], robust=4)["status"] == "unreliable"
    passed = Check("silent_success", True, {}, "", "")
    assert decide((), (passed,), [], robust=0)["advice"] == ""

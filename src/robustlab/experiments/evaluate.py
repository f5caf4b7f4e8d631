"""``robustlab evaluate``: the verdict on any model, into a resumable folder.

The folder holds ``evaluation.json`` (what is evaluated: written first, so a second run
with other settings is refused rather than mixed in), ``steps/`` (each attack's result as
it finishes: a killed run resumes from there), then ``verdict.json``, a RobustBench-style
``card.json`` with the verdict fields, and with ``report`` a one-page ``report.html``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from robustlab.data import load_dataset, sample
from robustlab.data.datasets import Dataset
from robustlab.evaluation.escalation import Evaluation
from robustlab.evaluation.verdict import EvaluationConfig, EvaluationPlan, SourceRecord, Verdict
from robustlab.experiments.jobs import resolve_device
from robustlab.io import (
    RobustlabError,
    atomic_write,
    read_json,
    under,
    write_json,
    writes_output,
)
from robustlab.models.external import build_external, is_external, load_weights
from robustlab.report.robustbench import check_card
from robustlab.report.verdict_page import verdict_card, verdict_page
from robustlab.runs import load, read_meta
from robustlab.version import __version__

PLAN_FILE = "evaluation.json"


@dataclass(frozen=True)
class ModelSource:
    """Where the evaluated model comes from: a run folder, or a factory (``package.module:
    function``, named on the command line by the user) with optional weights and the
    normalisation its network expects."""

    model: str
    weights: str | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def describe(self) -> SourceRecord:
        digest = None
        if self.weights is not None:
            digest = hashlib.sha256(Path(self.weights).read_bytes()).hexdigest()[:16]
        elif not is_external(self.model):
            digest = hashlib.sha256(
                (Path(self.model) / "model.safetensors").read_bytes()
            ).hexdigest()[:16]
        return {
            "model": self.model,
            "weights": self.weights,
            "sha256": digest,
            "mean": list(self.mean or []),
            "std": list(self.std or []),
        }


def _load_model(source: ModelSource, data: Dataset, device: torch.device, seed: int) -> nn.Module:
    if not is_external(source.model):
        return load(source.model, device)
    # seeded, so that a factory's initial weights (those kept without --weights) are the
    # same in every run: an interrupted evaluation resumes on the same model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_external(
            source.model,
            num_classes=len(data.classes),
            in_channels=data.channels,
            image_size=data.image_size,
            mean=source.mean,
            std=source.std,
            options={},
        )
    if source.weights is not None:
        load_weights(model, source.weights)
    return model.to(device).eval()


def _dataset(source: ModelSource, dataset: str | None, data_dir: str | None) -> Dataset:
    if dataset is None:
        if is_external(source.model):
            raise ValueError("--dataset is needed with a model factory (robustlab list datasets)")
        recorded = read_meta(source.model)["dataset"]
        dataset, data_dir = recorded["name"], data_dir or recorded.get("data_dir")
    return load_dataset(dataset, "test", data_dir)


@writes_output("out", "robustlab evaluate")
def evaluate_model(
    *,
    source: ModelSource,
    config: EvaluationConfig,
    out: str | Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    n: int = 1000,
    seed: int = 0,
    base: str | None = None,
    device: str = "auto",
    report: bool = False,
    quiet: bool = False,
    command: str = "",
) -> Verdict:
    """Evaluate ``source`` on ``n`` seeded test images into ``out`` (module docstring)."""
    out = Path(out)
    data = sample(_dataset(source, dataset, data_dir), n, seed)
    plan: EvaluationPlan = {
        "robustlab": __version__,
        "source": source.describe(),
        "base": base,
        "dataset": data.name,
        "n": len(data),
        "images_sha256": hashlib.sha256(data.images.tobytes() + data.labels.tobytes()).hexdigest()[
            :16
        ],
        "seed": seed,
        "config": config.to_dict(),
    }
    chosen = resolve_device(device)
    model = _load_model(source, data, chosen, seed)  # before anything is written: a bad model
    base_model = load(base, chosen) if base is not None else None  # leaves no folder
    _claim(out, plan)
    x, y = data.tensors()
    evaluation = Evaluation(
        model, x, y, config, base=base_model, seed=seed, store=under(out, "steps"), quiet=quiet
    )
    verdict = evaluation.run()
    record = {**verdict.to_dict(), "plan": plan, "command": command}
    card = verdict_card(verdict, plan)
    check_card(card)  # the RobustBench fields, as for the cards of `robustlab run`
    write_json(out / "verdict.json", record)
    write_json(out / "card.json", card)
    if report:
        with atomic_write(out / "report.html", "w") as handle:
            handle.write(verdict_page(verdict, plan, command))
    return verdict


def _claim(out: Path, plan: EvaluationPlan) -> None:
    """Write the plan first; a folder holding another evaluation's plan is refused."""
    path = out / PLAN_FILE
    if path.is_file():
        found = read_json(path)
        if found != plan:
            changed = (
                sorted(k for k, v in dict(plan).items() if found.get(k) != v)
                if isinstance(found, dict)
                else ["all"]
            )
            raise RobustlabError(
                f"{out} holds another evaluation (differs in {', '.join(changed)}); "
                "choose another --out or delete it"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, plan)

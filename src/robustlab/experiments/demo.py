"""``robustlab demo``: a standard and a defective model, attacked by transfer from a third.

On 2 CPU cores it takes a few minutes: three ResNet-8 models (a source, a standard target
and a ``bottom:0.1`` defective target), FGSM and PGD adversarial sets made once on the
source, the transfer table, and the additive Gaussian noise curve. Everything is written
under the output folder and reused when the demo runs again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import robustlab
from robustlab.attacks import load_set
from robustlab.data import load_dataset
from robustlab.data.datasets import SOURCES
from robustlab.defenses.defective import DefectSpec
from robustlab.evaluation.protocols import noise_curve
from robustlab.evaluation.stats import Rate
from robustlab.evaluation.transfer import transfer
from robustlab.experiments.jobs import make_adversarial_set, sample_indices, train_model
from robustlab.io import atomic_write, write_json
from robustlab.training import TrainConfig

Record = dict[str, Any]  # JSON-ready results


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of the demo; the defaults finish in minutes on 2 CPU cores."""

    train_images: int = 12_000
    test_images: int = 1_000
    epochs: int = 4
    noise_sigmas: tuple[int, ...] = (8, 16, 32, 48)


def demo_dataset() -> str:
    """Fashion-MNIST when its files are present, else scikit-learn's digits."""
    for path in SOURCES["fashion-mnist"].candidates(None):
        if path.is_dir() and any(path.glob("train-images-idx3-ubyte*")):
            return "fashion-mnist"
    return "digits"


def run_demo(out: str | Path, quiet: bool = False, plan: DemoPlan | None = None) -> str:
    """Train, attack, evaluate; write ``results.json`` and ``results.md``; return the table."""
    out, plan = Path(out), plan or DemoPlan()
    dataset = demo_dataset()
    if not quiet:
        print(f"demo dataset: {dataset}")
    runs = _train_models(out, dataset, plan, quiet)
    attacks = {
        "FGSM ε=16": ("fgsm", {"eps": 16 / 255}),
        "PGD ε=16, 20×1": ("pgd", {"eps": 16 / 255, "step": 1 / 255, "steps": 20}),
    }
    records: dict[str, dict[str, Record]] = {name: {} for name in ("standard", "defective")}
    for label, (attack, params) in attacks.items():
        path = out / "advs" / f"{attack}.npz"
        if not path.is_file():
            make_adversarial_set(
                sources=[runs["source"]], attack=attack, params=params, out=path,
                n=plan.test_images, seed=0, quiet=quiet,
            )  # fmt: skip
        adv_set = load_set(path)
        clean = load_dataset(dataset, "test").subset(adv_set.indices).tensors()[0]
        for name in records:
            records[name][label] = transfer(robustlab.load(runs[name]), adv_set, clean).to_dict()
    noise = _noise_curve(runs, dataset, plan)
    result = {"dataset": dataset, "plan": plan.__dict__, "transfer": records, "noise": noise}
    write_json(out / "results.json", result)
    table = _table(result, plan)
    with atomic_write(out / "results.md", "w") as handle:
        handle.write(table + "\n")
    return table


def _train_models(out: Path, dataset: str, plan: DemoPlan, quiet: bool) -> dict[str, Path]:
    specs = {
        "source": (None, 1),
        "standard": (None, 0),
        "defective": (DefectSpec(0.1, "bottom"), 0),
    }
    runs = {}
    for name, (defect, seed) in specs.items():
        runs[name] = out / "runs" / name
        config = TrainConfig(epochs=plan.epochs, batch_size=128, lr=0.05, seed=seed)
        train_model(
            dataset=dataset, arch="resnet8", out=runs[name], config=config, defect=defect,
            train_limit=plan.train_images, resume=True, quiet=quiet,
        )  # fmt: skip
    return runs


def _noise_curve(
    runs: dict[str, Path], dataset: str, plan: DemoPlan
) -> dict[str, dict[int, Record]]:
    """Accuracy under additive Gaussian noise, on test images both targets get right."""
    test = load_dataset(dataset, "test")
    x, y = test.subset(sample_indices(len(test), plan.test_images, 0)).tensors()
    models = {name: robustlab.load(runs[name]) for name in ("standard", "defective")}
    curve = noise_curve(models, x, y, plan.noise_sigmas, seed=0)
    return {
        name: {int(s): rate.to_dict() for s, rate in rates.items()} for name, rates in curve.items()
    }


def _table(result: Record, plan: DemoPlan) -> str:
    def fmt(rate: Record) -> str:
        return str(Rate(rate["hits"], rate["n"]))

    transfer_rows = [
        f"| {name} | {fmt(next(iter(rows.values()))['clean_accuracy'])} | "
        + " | ".join(fmt(r["defense_rate"]) for r in rows.values())
        + " |"
        for name, rows in result["transfer"].items()
    ]
    attacks = list(next(iter(result["transfer"].values())))
    sigmas = list(plan.noise_sigmas)
    noise_rows = [
        f"| {name} | " + " | ".join(fmt(curve[s]) for s in sigmas) + " |"
        for name, curve in result["noise"].items()
    ]
    return "\n".join(
        [
            f"dataset: {result['dataset']} ({plan.train_images} training images, ResNet-8, "
            f"{plan.epochs} epochs; source: an independently trained ResNet-8)",
            "",
            "Transfer: success defense rate [95% Wilson interval] (paper appendix A.7)",
            "",
            "| target | clean accuracy | " + " | ".join(attacks) + " |",
            "|---|---|" + "---|" * len(attacks),
            *transfer_rows,
            "",
            "Additive Gaussian noise: accuracy on images both targets classify correctly",
            "",
            "| target | " + " | ".join(f"σ={s}" for s in sigmas) + " |",
            "|---|" + "---|" * len(sigmas),
            *noise_rows,
            "",
            "Seeds: source 1, targets 0, masks 0, attacks 0. Raw numbers: results.json.",
        ]
    )

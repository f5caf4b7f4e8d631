"""``robustlab demo``: small standard and defective models on real data, compared side by side."""

from __future__ import annotations

from pathlib import Path

from robustlab.data.datasets import SOURCES
from robustlab.defenses.defective import DefectSpec
from robustlab.experiments.jobs import train_model
from robustlab.io import RobustlabError
from robustlab.training import TrainConfig


def demo_dataset() -> str:
    """Fashion-MNIST when its files are present, else scikit-learn's digits."""
    for path in SOURCES["fashion-mnist"].candidates(None):
        if path.is_dir() and any(path.glob("train-images-idx3-ubyte*")):
            return "fashion-mnist"
    return "digits"


def run_demo(out: str | Path, quiet: bool = False) -> str:
    """Train a standard and a ``bottom:0.5`` defective ResNet-8; return a results table."""
    out = Path(out)
    dataset = demo_dataset()
    limit = 12_000 if dataset == "fashion-mnist" else None
    config = TrainConfig(epochs=3, batch_size=128, lr=0.05, seed=0)
    rows = []
    for name, defect in (("standard", None), ("defective bottom:0.5", DefectSpec(0.5))):
        run = out / "runs" / name.split()[0]
        try:
            meta = train_model(
                dataset=dataset, arch="resnet8", out=run, config=config, defect=defect,
                train_limit=limit, test_limit=2000, resume=True, quiet=quiet,
            )  # fmt: skip
        except RobustlabError:
            raise
        rows.append(f"| {name} | {meta['test_accuracy']:.4f} |")
    header = f"dataset: {dataset}\n\n| model | clean test accuracy |\n|---|---|"
    return "\n".join([header, *rows])

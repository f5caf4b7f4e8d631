"""``robustlab demo``: the packaged demo spec, run by the same executor as ``robustlab run``.

A source, a standard and a ``bottom:0.1`` defective ResNet-8 are trained on Fashion-MNIST
(scikit-learn's digits when Fashion-MNIST is not installed), FGSM and PGD adversarial sets
are made once on the source, and the transfer table and the Gaussian-noise curve are
written under the output folder. Running it again reuses everything it finished.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from robustlab.data.datasets import SOURCES
from robustlab.experiments.executor import markdown, run_spec
from robustlab.experiments.spec import Spec, parse_spec, parse_toml


def demo_dataset() -> str:
    """Fashion-MNIST when its files are present, else scikit-learn's digits."""
    for path in SOURCES["fashion-mnist"].candidates(None):
        if path.is_dir() and any(path.glob("train-images-idx3-ubyte*")):
            return "fashion-mnist"
    return "digits"


def demo_spec(dataset: str) -> Spec:
    """The packaged demo spec, adapted to ``dataset`` (``fashion-mnist`` or ``digits``)."""
    text = resources.files("robustlab.experiments").joinpath("specs/demo.toml").read_text()
    raw = parse_toml(text)
    if dataset == "digits":  # 8×8 images: no crop padding, the whole (small) train split
        raw["experiment"].update(dataset="digits", n=360)
        del raw["train"]["train_limit"]
        raw["train"].update(pad=0, epochs=15)
    return parse_spec(raw)


def run_demo(out: str | Path, quiet: bool = False, device: str = "auto") -> str:
    """Run the demo spec into ``out``; return its tables (markdown), prefixed by the dataset."""
    dataset = demo_dataset()
    if not quiet:
        print(f"demo dataset: {dataset}")
    records = run_spec(demo_spec(dataset), out, device=device, quiet=quiet)
    return f"dataset: {dataset}\n\n" + markdown(records)

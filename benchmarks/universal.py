"""UAP: robustlab vs ART's UniversalPerturbation (DeepFool inner attack). Goal: same
fooling rate, >= 5x faster.

    python benchmarks/universal.py [--run runs/foundation/fashion-mnist-standard] [--images 256]

Both compute an ℓ∞ universal perturbation of radius ξ on the same images of the
run's test split against the same model: DeepFool overshoot 0.02, at most 50
DeepFool steps with 10 candidate classes, target fooling rate 1 − δ = 0.8, at
most --passes passes. The fooling rate is measured on those images and on
1000 other test images (held out).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustlab.attacks.universal import UAP, fooling_rate
from robustlab.data import load_dataset, sample
from robustlab.runs import load, read_meta


def art_uap(
    model: nn.Module, images: torch.Tensor, classes: int, xi: float, passes: int
) -> tuple[float, torch.Tensor]:
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    random.seed(0)
    np.random.seed(0)
    classifier = PyTorchClassifier(
        model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(images.shape[1:]),
        nb_classes=classes,
        clip_values=(0.0, 1.0),
    )
    attack = UniversalPerturbation(
        classifier,
        attacker="deepfool",
        attacker_params={"epsilon": 0.02, "max_iter": 50, "nb_grads": 10, "verbose": False},
        delta=0.2,
        max_iter=passes,
        eps=xi,
        norm=np.inf,
        verbose=False,
    )
    start = time.perf_counter()
    attack.generate(images.numpy())
    elapsed = time.perf_counter() - start
    return elapsed, torch.from_numpy(np.asarray(attack.noise)[0]).float()


def train_fallback() -> str:
    """No foundation run here (a fresh clone): train a small one, 2 epochs, once."""
    from robustlab.experiments.jobs import train_model
    from robustlab.training import TrainConfig

    run = "runs/bench-universal"
    if not (Path(run) / "meta.json").exists():
        print(f"training {run} (resnet8 width 16, Fashion-MNIST or digits, 2 epochs) first")
        try:
            dataset = "fashion-mnist"
            load_dataset(dataset, "test")
        except Exception:
            dataset = "digits"
        train_model(
            dataset=dataset,
            arch="resnet8",
            out=run,
            config=TrainConfig(epochs=2),
            options={"width": 16},
            train_limit=10000,
            device="cpu",
            quiet=True,
        )
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/foundation/fashion-mnist-standard")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--xi", type=float, default=25.0, help="ℓ∞ radius, 0-255 units")
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    if not (Path(args.run) / "meta.json").exists():
        args.run = train_fallback()
    model = load(args.run)
    meta = read_meta(args.run)
    test = load_dataset(meta["dataset"]["name"], "test")
    images, _ = sample(test, args.images, seed=0).tensors()
    held_out, _ = sample(test, 1000, seed=1).tensors()
    xi = args.xi / 255
    start = time.perf_counter()
    ours = UAP(model, xi=xi, max_passes=args.passes, batch_size=32, seed=0)(images).delta
    ours_time = time.perf_counter() - start
    art_time, theirs = art_uap(model, images, len(meta["dataset"]["classes"]), xi, args.passes)
    print(
        f"{args.run}, {args.images} images, ξ={args.xi:g}/255 ℓ∞, threads {torch.get_num_threads()}"
    )
    for name, delta, seconds in (("robustlab", ours, ours_time), ("ART", theirs, art_time)):
        rate, held = fooling_rate(model, images, delta), fooling_rate(model, held_out, delta)
        size = 255 * float(delta.abs().max())
        print(
            f"{name:9s} {seconds:8.1f} s  fooling rate {rate:.3f} (held out {held:.3f})  "
            f"ℓ∞ {size:.1f}/255"
        )
    print(f"speed-up {art_time / ours_time:.1f}x (goal >= 5x at the same fooling rate)")


if __name__ == "__main__":
    main()

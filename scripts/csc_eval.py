"""CSC purification evaluated as in the method's paper, at CPU scale, resumable.

    .venv/bin/python scripts/csc_eval.py --dataset fashion-mnist --dict dicts/fashion-mnist-64x8 \
        --out results/csc-fashion-mnist [--train 6000] [--n 500] [--epochs 5]

1. a standard classifier is trained on clean training images (the attacked model);
2. the same training images are purified and a second classifier is trained on them
   (the paper trains its classifiers on reconstructed images);
3. FGSM, PGD and CW-L2 adversarial examples are crafted against the standard
   classifier on n test images (the purifier is unknown to the attacker);
   (with --base-run: the attacked classifier is that run, trained on all clean images, and the
   CSC classifier is it fine-tuned on the purified images: purifying 50,000 images does not fit
   a CPU budget);
4. accuracy: standard classifier on the raw images; CSC classifier on raw and on
   purified images; and the adaptive attack: PGD through purifier + CSC classifier
   with BPDA (the purifier's backward is the identity).
Every stage's output is saved under --out and reused when the script runs again.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import build as build_attack
from robustlab.data import Dataset, load_dataset, sample
from robustlab.defenses.csc import CSCPurifier
from robustlab.evaluation.stats import wilson_interval
from robustlab.experiments.jobs import model_config_for
from robustlab.io import load_tensors, save_tensors, write_json
from robustlab.models.base import predict
from robustlab.runs import load
from robustlab.training import TrainConfig, train

ATTACKS = {
    "FGSM ε=8": ("fgsm", {"eps": 8 / 255}),
    "PGD ε=8, 10×2": ("pgd", {"eps": 8 / 255, "step": 2 / 255, "steps": 10}),
    "CW-L2 (c=0.1, 100 steps)": ("cw", {"c": 0.1, "steps": 100, "search_steps": 1, "lr": 0.01}),
}


def cached(path: Path, make: callable) -> torch.Tensor:  # type: ignore[valid-type]
    if path.exists():
        return load_tensors(path)[0]["x"]
    value = make()
    save_tensors(path, {"x": value})
    return value


def purify(purifier: CSCPurifier, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([purifier(chunk) for chunk in images.split(64)])


def train_on(
    images: torch.Tensor, data: Dataset, test: Dataset, run: Path, epochs: int
) -> nn.Module:
    if not (run / "meta.json").exists():
        pixels = (images * 255).round().to(torch.uint8).numpy()
        own = Dataset(data.name, "train", pixels, data.labels, data.classes, data.mean, data.std)
        config = model_config_for(own, "resnet8", width=16)
        train(config, own, test, TrainConfig(epochs=epochs, pad=2), run, quiet=True)
    return load(run)


def fine_tune(
    base_run: str, images: torch.Tensor, labels: torch.Tensor, run: Path, epochs: int
) -> nn.Module:
    """The base run's model, fine-tuned on ``images`` (SGD 0.01, flips); saved to ``run``."""
    if not (run / "model.safetensors").exists():
        model = load(base_run).train()
        optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            for batch in torch.randperm(len(images), generator=generator).split(128):
                x = images[batch]
                flip = torch.rand(len(x), generator=generator) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                loss = F.cross_entropy(model(x), labels[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        save_tensors(run / "model.safetensors", model.state_dict())
    model = load(base_run)
    model.load_state_dict(load_tensors(run / "model.safetensors")[0])
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    correct = int((predict(model, x) == y).sum())
    low, high = wilson_interval(correct, len(y))
    return {"accuracy": correct / len(y), "low": low, "high": high, "n": len(y)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--dict", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--adaptive-n", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--base-run",
        help="attack this clean-trained run; fine-tune it on the purified images (no training "
        "from scratch)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    train_data = sample(load_dataset(args.dataset, "train"), args.train, seed=0)
    test_data = sample(load_dataset(args.dataset, "test"), args.n, seed=1)
    purifier = CSCPurifier(args.dict)
    x_train, _ = train_data.tensors()
    x_test, y_test = test_data.tensors()
    purified_train = cached(
        args.out / "purified_train.safetensors", lambda: purify(purifier, x_train)
    )
    if args.base_run:  # a classifier trained on all clean images, then adapted to purified ones
        standard = load(args.base_run)
        labels = torch.from_numpy(train_data.labels)
        defended = fine_tune(args.base_run, purified_train, labels, args.out / "csc", args.epochs)
    else:
        standard = train_on(x_train, train_data, test_data, args.out / "standard", args.epochs)
        defended = train_on(purified_train, train_data, test_data, args.out / "csc", args.epochs)
    inputs = {"clean": x_test}
    for name, (attack, params) in ATTACKS.items():
        make = lambda a=attack, p=params: build_attack(a, standard, **p)(x_test, y_test)  # noqa: E731
        inputs[name] = cached(args.out / f"adv_{attack}.safetensors", make)
    rows = {}
    for name, x in inputs.items():
        x_purified = cached(
            args.out / f"purified_{name.split()[0]}.safetensors", lambda x=x: purify(purifier, x)
        )
        rows[name] = {
            "standard": accuracy(standard, x, y_test),
            "csc, no purification": accuracy(defended, x, y_test),
            "csc + purification": accuracy(defended, x_purified, y_test),
        }
    pipeline = nn.Sequential(CSCPurifier(args.dict, bpda=True), defended).eval()
    k = args.adaptive_n
    adaptive = cached(
        args.out / "adv_bpda_pgd.safetensors",
        lambda: build_attack("pgd", pipeline, eps=8 / 255, step=2 / 255, steps=10)(
            x_test[:k], y_test[:k]
        ),
    )
    rows["BPDA+PGD ε=8, 10×2 (adaptive)"] = {
        "csc + purification": accuracy(defended, purify(purifier, adaptive), y_test[:k]),
        "csc + purification, same images clean": accuracy(
            defended,
            cached(args.out / "purified_clean.safetensors", lambda: purify(purifier, x_test))[:k],
            y_test[:k],
        ),
    }
    write_json(
        args.out / "results.json",
        {
            "rows": rows,
            "args": {k_: str(v) for k_, v in vars(args).items()},
            "seconds": time.time() - start,
        },
    )
    for name, cols in rows.items():
        cells = ", ".join(
            f"{c}: {100 * r['accuracy']:.1f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"
            for c, r in cols.items()
        )
        print(f"{name}: {cells}")
    print(f"seconds: {time.time() - start:.0f}")


if __name__ == "__main__":
    main()

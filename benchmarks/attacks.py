"""Attack speed against the reference libraries, measured in one run on the same model and batch.

    .venv/bin/python benchmarks/attacks.py [--arch resnet8] [--batch 128] [--device cpu]

- PGD-20 and MI-FGSM-20: images/s of robustlab vs torchattacks (goal >= 1.2x) and vs the floor,
  steps x one forward+backward of the model with respect to its input (goal <= 1.1x).
- CW-L2 (one constant, 100 Adam steps) vs torchattacks CW (goal >= 1x).
- APGD-CE (100 steps) and Square (--square-queries): images/s and robust accuracy of
  robustlab vs torchattacks on the trained LeNet below (goals: APGD >= 1x torchattacks at
  equal robust accuracy and <= 1.1x the floor of 100 forward+backward passes; Square >= 1x
  at equal budget and success).
- AutoAttack, standard version: robustlab's strong protocol (APGD-CE, APGD-T, FAB-T, Square;
  100 steps, 9 target classes, --aa-queries) vs torchattacks' ``AutoAttack`` on the same
  LeNet and images: robust accuracy (goal: at most theirs) and wall time (goal: at most theirs).
- Boundary: Foolbox 3's BoundaryAttack runs --boundary-steps (5000) steps; robustlab's runs with
  fast step-size adaptation (FAST_BOUNDARY) and the fewest steps (from a ladder) that reach
  Foolbox's median L2;
  wall-time ratio (goal <= 1/5). Uses a small LeNet trained for seconds on a Fashion-MNIST
  slice, so that Foolbox finishes in minutes.
The models of the gradient attacks are randomly initialised: their speed does not depend on
training.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

import robustlab
from robustlab.attacks import APGD, CW, MIFGSM, PGD, Boundary, Square
from robustlab.attacks.distances import l2
from robustlab.data import load_dataset, sample
from robustlab.experiments.demo import fashion_mnist_problem
from robustlab.experiments.jobs import model_config_for
from robustlab.models import build
from robustlab.models.base import frozen
from robustlab.training import TrainConfig, train


def timed(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def floor(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int
) -> Callable[[], None]:
    """``steps`` forward+backward passes with respect to the input: what any attack must pay."""

    def run() -> None:
        with frozen(model):
            for _ in range(steps):
                xx = x.detach().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(model(xx), y, reduction="sum"), xx)

    return run


def gradient_attacks(args: argparse.Namespace) -> list[tuple[str, float, float, float | None]]:
    import torchattacks

    torch.manual_seed(0)
    model = build(args.arch, image_size=32).to(args.device).eval()
    x = torch.rand(args.batch, 3, 32, 32, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    eps, step, steps = 16 / 255, 1 / 255, 20
    cases = [
        (
            "PGD-20",
            PGD(model, eps, step, steps),
            torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=False),
            steps,
        ),
        (
            "MI-FGSM-20",
            MIFGSM(model, eps, step, steps),
            torchattacks.MIFGSM(model, eps=eps, alpha=step, steps=steps),
            steps,
        ),
        (
            "CW-L2 (c=1, 100 steps)",
            CW(model, c=1.0, steps=100, search_steps=1),
            torchattacks.CW(model, c=1.0, kappa=0, steps=100, lr=0.01),
            None,
        ),
    ]
    rows = []
    for name, ours, ref, n_steps in cases:
        t_ours = timed(lambda a=ours: a(x, y), args.repeats, args.device)
        t_ref = timed(lambda a=ref: a(x, y), args.repeats, args.device)
        t_floor = timed(floor(model, x, y, n_steps), args.repeats, args.device) if n_steps else None
        rows.append((name, t_ours, t_ref, t_floor))
    return rows


# One proposal a step, step sizes adapted every step from short histories (Foolbox 3: every
# 10 steps, histories of 100 and 30 checks, so nothing adapts before step 300).
FAST_BOUNDARY = {"update_every": 1, "spherical_history": 10, "step_history": 5}


def trained_lenet(device: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A LeNet (width 8) trained for 2 epochs on 6,000 Fashion-MNIST images (digits if absent),
    and 64 test images it classifies correctly: decision attacks need a real decision."""
    name = "digits" if fashion_mnist_problem(download=False) else "fashion-mnist"
    train_data = sample(load_dataset(name, "train"), 6000)
    test_data = load_dataset(name, "test")
    config = model_config_for(train_data, "lenet", width=8)
    with tempfile.TemporaryDirectory() as run:
        train(
            config,
            train_data,
            test_data,
            TrainConfig(epochs=2, lr=0.05, pad=0),
            run,
            device=device,
            quiet=True,
        )
        model = robustlab.load(run, device)
    x, y = sample(test_data, 256).tensors(device)
    correct = model(x).argmax(1) == y
    return model, x[correct][:64], y[correct][:64]


def strong_attacks(args: argparse.Namespace) -> list[tuple[str, float, float, float, float]]:
    """(name, ours s, torchattacks s, ours robust acc, their robust acc) for APGD and Square,
    and a row for the floor of 100 forward+backward passes (its time in both columns)."""
    import torchattacks

    model, x, y = trained_lenet(args.device)
    eps = 8 / 255

    def robust(adv: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(adv).argmax(1) == y).float().mean())

    cases = [
        (
            "APGD-CE-100",
            APGD(model, eps, 100),
            torchattacks.APGD(model, eps=eps, steps=100, loss="ce"),
        ),
        (
            f"Square-{args.square_queries}",
            Square(model, eps, args.square_queries),
            torchattacks.Square(model, eps=eps, n_queries=args.square_queries),
        ),
    ]
    rows = []
    for name, ours, ref in cases:
        t_ours = timed(lambda a=ours: a(x, y), args.repeats, args.device)
        t_ref = timed(lambda a=ref: a(x, y), args.repeats, args.device)
        rows.append((name, t_ours, t_ref, robust(ours(x, y)), robust(ref(x, y))))
    t_floor = timed(floor(model, x, y, 100), args.repeats, args.device)
    rows.append(("floor: 100 fwd+bwd", t_floor, t_floor, float("nan"), float("nan")))
    return rows


def autoattack(args: argparse.Namespace) -> tuple[float, float, float, float]:
    """(ours s, torchattacks s, ours robust acc, their robust acc): the standard version."""
    import torchattacks

    from robustlab.evaluation.strong import VERSIONS, StrongConfig, strong_attack

    model, x, y = trained_lenet(args.device)
    config = StrongConfig(eps=8 / 255, queries=args.aa_queries, attacks=VERSIONS["standard"])
    start = time.perf_counter()
    ours = strong_attack(model, x, y, config).accuracy.value
    t_ours, start = time.perf_counter() - start, time.perf_counter()
    reference = torchattacks.AutoAttack(model, norm="Linf", eps=8 / 255, n_classes=10, seed=0)
    # torchattacks builds its AutoAttack from its attacks' defaults: 10 steps for APGD,
    # APGD-T and FAB, where AutoAttack (and our standard version) runs 100. Compared at
    # AutoAttack's budget, the same as ours: 100 steps, and Square at --aa-queries.
    for attack in reference._autoattack.attacks:
        if isinstance(attack, torchattacks.Square):
            attack.n_queries = args.aa_queries
        else:
            attack.steps = config.steps
    adv = reference(x, y)
    t_ref = time.perf_counter() - start
    with torch.no_grad():
        theirs = float((model(adv).argmax(1) == y).float().mean())
    return t_ours, t_ref, ours, theirs


def boundary(args: argparse.Namespace) -> tuple[float, float, float, int, float]:
    import foolbox as fb

    model, x, y = trained_lenet(args.device)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ref_adv, _ = fb.attacks.BoundaryAttack(steps=args.boundary_steps)(
            fb.PyTorchModel(model, bounds=(0, 1)),
            x,
            fb.criteria.Misclassification(y),
            epsilons=None,
        )
    t_ref, d_ref = time.perf_counter() - start, float(l2(x, ref_adv).median())
    for steps in (100, 200, 300, 400, 500, 600, 800, 1000, 1500, 2000, 3000, 4000, 5000):
        attack = Boundary(model, steps=steps, **FAST_BOUNDARY)
        start = time.perf_counter()
        adv = attack(x, y)
        t_ours, d_ours = time.perf_counter() - start, float(l2(x, adv).median())
        if d_ours <= d_ref:
            break
    return t_ours, t_ref, d_ours, steps, d_ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet8")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--boundary-steps", type=int, default=5000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-boundary", action="store_true")
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--aa-queries", type=int, default=5000)
    parser.add_argument("--skip-autoattack", action="store_true")
    args = parser.parse_args()
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}, {args.arch}, "
        f"batch {args.batch}, 32x32x3, median of {args.repeats}"
    )
    print(f"{'attack':<24}{'ours img/s':>12}{'torchattacks':>14}{'speed-up':>10}{'ours/floor':>12}")
    for name, t_ours, t_ref, t_floor in gradient_attacks(args):
        vs_floor = f"{t_ours / t_floor:.2f}" if t_floor else "-"
        print(
            f"{name:<24}{args.batch / t_ours:12.1f}{args.batch / t_ref:14.1f}"
            f"{t_ref / t_ours:9.2f}x{vs_floor:>12}"
        )
    rows = strong_attacks(args)
    print("\nTrained lenet (width 8), 64 test images it gets right, eps 8/255")
    print(
        f"{'attack':<24}{'ours img/s':>12}{'torchattacks':>14}{'speed-up':>10}"
        f"{'ours acc':>10}{'their acc':>11}"
    )
    for name, t_ours, t_ref, acc_ours, acc_ref in rows:
        print(
            f"{name:<24}{64 / t_ours:12.1f}{64 / t_ref:14.1f}{t_ref / t_ours:9.2f}x"
            f"{100 * acc_ours:9.1f}%{100 * acc_ref:10.1f}%"
        )
    apgd_floor = rows[0][1] / rows[-1][1]
    print(f"APGD-CE-100 / floor: {apgd_floor:.2f} (goal <= 1.1)")
    if not args.skip_autoattack:
        t_ours, t_ref, ours, theirs = autoattack(args)
        print(
            f"\nAutoAttack standard (APGD-CE, APGD-T, FAB-T, Square-{args.aa_queries}), same "
            f"LeNet and 64 images: robustlab {t_ours:.1f} s, robust {100 * ours:.1f}%; "
            f"torchattacks {t_ref:.1f} s, robust {100 * theirs:.1f}% (goals: accuracy and time "
            "at most theirs)"
        )
    if not args.skip_boundary:
        t_ours, t_ref, d_ours, steps, d_ref = boundary(args)
        print(
            f"\nBoundary, trained lenet (width 8), 64 test images: "
            f"Foolbox {args.boundary_steps} steps "
            f"{t_ref:.1f} s, median L2 {d_ref:.3f}; robustlab (FAST_BOUNDARY) {steps} steps "
            f"{t_ours:.1f} s, median L2 {d_ours:.3f}; time ratio {t_ours / t_ref:.3f} (goal <= 0.2)"
        )


if __name__ == "__main__":
    main()

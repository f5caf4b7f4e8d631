"""NCHW against channels-last (NHWC), and BatchNorm folded against run as a module, for
robustlab's networks, on the passes the specs make.

    python benchmarks/layout.py [--rounds 5] [--device cpu]

For the specs' ResNet-8 (width 16) on Fashion-MNIST-sized (1×28×28) and CIFAR-sized
(3×32×32) images: a training step (batch 128, SGD), the input gradient an attack takes
(batch 100, 30 and 10: APGD on every image, then on survivors) and a forward pass (batch
100, 17 and 1: scoring, Square's queries on a few survivors). The two layouts alternate
round after round (this host drifts by ±20 % within minutes) and the median of the rounds'
ratios is printed: NCHW time over channels-last time (> 1: channels-last is faster), which
is what :func:`robustlab.models.base.channels_last_pays` decides on. The largest logit
difference of the two layouts on the same weights shows what the layout costs in float32
rounding.

Then, in the layout evaluation uses, the same for folding (``ConvBN``): every unit run as
``nn.Sequential(conv, bn)`` against the unit with BatchNorm folded into the convolution,
weights frozen as attacks freeze them, on the evaluation passes (ratio > 1: folding is
faster). Last, what counting costs: the same passes with a ``Meter`` open (every record's
cell has one) against none (ratio > 1: counting slows the pass down).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.models import build
from robustlab.models.base import ConvBN, channels_last_pays, place
from robustlab.models.cost import Meter, count_passes

CASES = (  # (pass, batch, repetitions per round)
    ("train", 128, 6),
    ("grad", 100, 8),
    ("grad", 30, 20),
    ("grad", 10, 40),
    ("forward", 100, 20),
    ("forward", 17, 60),
    ("forward", 1, 200),
)


def network(channels: int, size: int, channels_last: bool, device: torch.device) -> nn.Module:
    torch.manual_seed(0)  # the same weights in both layouts
    model = build("resnet8", in_channels=channels, image_size=size, width=16)
    return place(model, device, channels_last=channels_last)  # as evaluation lays it out


def one_pass(model: nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """A closure running one pass of ``kind`` on ``model``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    model.train(kind == "train")

    def run() -> None:
        if kind == "train":
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        elif kind == "grad":
            point = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(point), y), point)
        else:
            with torch.no_grad():
                model(x)

    return run


def seconds(run: Callable[[], None], repetitions: int, device: torch.device) -> float:
    for _ in range(2):  # warm-up: oneDNN picks and caches its kernels
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repetitions):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repetitions


def compare(channels: int, size: int, rounds: int, device: torch.device) -> None:
    models = {cl: network(channels, size, cl, device) for cl in (False, True)}
    print(f"ResNet-8 w16, {channels}×{size}×{size}, {device}, {torch.get_num_threads()} threads")
    print(f"{'pass':8s} {'batch':>5s} {'NCHW ms/img':>12s} {'NHWC ms/img':>12s} {'ratio':>6s}")
    for kind, batch, repetitions in CASES:
        x = torch.rand(batch, channels, size, size, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for cl in (False, True):
                times[cl].append(seconds(one_pass(models[cl], kind, x, y), repetitions, device))
        ratio = statistics.median(a / b for a, b in zip(times[False], times[True], strict=True))
        plain, last = (1e3 * statistics.median(times[cl]) / batch for cl in (False, True))
        print(f"{kind:8s} {batch:5d} {plain:12.3f} {last:12.3f} {ratio:6.2f}")
    x = torch.rand(64, channels, size, size, device=device)
    with torch.no_grad():
        logits = [models[cl].eval()(x).double() for cl in (False, True)]
    gap = float((logits[0] - logits[1]).abs().max())
    print(f"largest logit difference between the layouts: {gap:.2e}")


def unfolded(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``ConvBN`` units are plain ``nn.Sequential(conv, bn)``."""
    copied = copy.deepcopy(model)
    for parent in list(copied.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ConvBN):
                setattr(parent, name, nn.Sequential(OrderedDict(child.named_children())))
    return copied


def compare_folding(channels: int, size: int, rounds: int, device: torch.device) -> None:
    folded = network(channels, size, channels_last_pays(device), device)  # as evaluation has it
    models = {"module": unfolded(folded), "folded": folded}
    for model in models.values():
        model.requires_grad_(False)  # as robustlab.models.base.frozen leaves them for attacks
    print(
        f"BatchNorm folded, {channels}×{size}×{size}, {device}, {torch.get_num_threads()} threads"
    )
    print(f"{'pass':8s} {'batch':>5s} {'BN ms/img':>12s} {'folded':>12s} {'ratio':>6s}")
    for kind, batch, repetitions in CASES:
        if kind == "train":
            continue  # training mode runs BatchNorm on the batch: nothing folds
        x = torch.rand(batch, channels, size, size, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(rounds):
            for name, model in models.items():
                times[name].append(seconds(one_pass(model, kind, x, y), repetitions, device))
        pairs = zip(times["module"], times["folded"], strict=True)
        ratio = statistics.median(a / b for a, b in pairs)
        plain, fused = (1e3 * statistics.median(times[name]) / batch for name in models)
        print(f"{kind:8s} {batch:5d} {plain:12.3f} {fused:12.3f} {ratio:6.2f}")
    x = torch.rand(64, channels, size, size, device=device)
    with torch.no_grad():
        logits = [model.eval()(x).double() for model in models.values()]
    gap = float((logits[0] - logits[1]).abs().max())
    print(f"largest logit difference, folded against the module: {gap:.2e}")


def compare_metered(channels: int, size: int, rounds: int, device: torch.device) -> None:
    model = count_passes(network(channels, size, channels_last_pays(device), device))
    model.requires_grad_(False)
    print(f"Counted passes, {channels}×{size}×{size}, {device}, {torch.get_num_threads()} threads")
    print(f"{'pass':8s} {'batch':>5s} {'ms/img':>12s} {'metered':>12s} {'ratio':>6s}")
    for kind, batch, repetitions in CASES:
        if kind == "train":
            continue
        x = torch.rand(batch, channels, size, size, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for metered in (False, True):
                run = one_pass(model, kind, x, y)
                if metered:
                    with Meter():
                        times[True].append(seconds(run, repetitions, device))
                else:
                    times[False].append(seconds(run, repetitions, device))
        ratio = statistics.median(a / b for a, b in zip(times[True], times[False], strict=True))
        plain, metered = (1e3 * statistics.median(times[m]) / batch for m in (False, True))
        print(f"{kind:8s} {batch:5d} {plain:12.3f} {metered:12.3f} {ratio:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    for channels, size in ((1, 28), (3, 32)):
        compare(channels, size, args.rounds, torch.device(args.device))
    for channels, size in ((1, 28), (3, 32)):
        compare_folding(channels, size, args.rounds, torch.device(args.device))
    compare_metered(1, 28, args.rounds, torch.device(args.device))


if __name__ == "__main__":
    main()

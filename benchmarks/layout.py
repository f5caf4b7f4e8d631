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
import contextlib
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


# times one pass of a kind, at a batch and repetitions, on one variant of the network
Timer = Callable[[str, torch.Tensor, torch.Tensor, int], float]


def table(
    title: str,
    variants: dict[str, Timer],
    shape: tuple[int, int],
    rounds: int,
    device: torch.device,
    *,
    train: bool = True,
) -> None:
    """One row per case of :data:`CASES`: each variant's median ms per image over the rounds
    (the variants alternate round after round) and the median of the rounds' ratios, first
    variant over second."""
    channels, size = shape
    threads = torch.get_num_threads()
    print(f"{title}, {channels}×{size}×{size}, {device}, {threads} threads")
    first, second = variants
    print(f"{'pass':8s} {'batch':>5s} {first + ' ms/img':>16s} {second + ' ms/img':>16s} ratio")
    for kind, batch, repetitions in CASES:
        if kind == "train" and not train:
            continue
        x = torch.rand(batch, channels, size, size, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, timer in variants.items():
                times[name].append(timer(kind, x, y, repetitions))
        pairs = zip(times[first], times[second], strict=True)
        ratio = statistics.median(a / b for a, b in pairs)
        a, b = (1e3 * statistics.median(times[name]) / batch for name in variants)
        print(f"{kind:8s} {batch:5d} {a:16.3f} {b:16.3f} {ratio:5.2f}")


def timer(model: nn.Module, device: torch.device, *, metered: bool = False) -> Timer:
    """Seconds per pass of ``model`` (inside a ``Meter``, as in a record's cell, if asked)."""

    def time_it(kind: str, x: torch.Tensor, y: torch.Tensor, repetitions: int) -> float:
        with Meter() if metered else contextlib.nullcontext():
            return seconds(one_pass(model, kind, x, y), repetitions, device)

    return time_it


def logit_gap(a: nn.Module, b: nn.Module, shape: tuple[int, int], device: torch.device) -> float:
    x = torch.rand(64, shape[0], shape[1], shape[1], device=device)
    with torch.no_grad():
        return float((a.eval()(x).double() - b.eval()(x).double()).abs().max())


def compare(shape: tuple[int, int], rounds: int, device: torch.device) -> None:
    models = {cl: network(*shape, cl, device) for cl in (False, True)}
    variants = {"NCHW": timer(models[False], device), "NHWC": timer(models[True], device)}
    table("ResNet-8 w16", variants, shape, rounds, device)
    gap = logit_gap(models[False], models[True], shape, device)
    print(f"largest logit difference between the layouts: {gap:.2e}")


def unfolded(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``ConvBN`` units are plain ``nn.Sequential(conv, bn)``."""
    copied = copy.deepcopy(model)
    for parent in list(copied.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ConvBN):
                setattr(parent, name, nn.Sequential(OrderedDict(child.named_children())))
    return copied


def compare_folding(shape: tuple[int, int], rounds: int, device: torch.device) -> None:
    folded = network(*shape, channels_last_pays(device), device)  # as evaluation has it
    module = unfolded(folded)
    for model in (folded, module):
        model.requires_grad_(False)  # as robustlab.models.base.frozen leaves them for attacks
    variants = {"BN": timer(module, device), "folded": timer(folded, device)}
    # training mode runs BatchNorm on the batch: nothing folds
    table("BatchNorm folded", variants, shape, rounds, device, train=False)
    gap = logit_gap(module, folded, shape, device)
    print(f"largest logit difference, folded against the module: {gap:.2e}")


def compare_metered(shape: tuple[int, int], rounds: int, device: torch.device) -> None:
    model = count_passes(network(*shape, channels_last_pays(device), device))
    model.requires_grad_(False)
    variants = {"metered": timer(model, device, metered=True), "plain": timer(model, device)}
    table("Counted passes", variants, shape, rounds, device, train=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    for shape in ((1, 28), (3, 32)):
        compare(shape, args.rounds, device)
    for shape in ((1, 28), (3, 32)):
        compare_folding(shape, args.rounds, device)
    compare_metered((1, 28), args.rounds, device)


if __name__ == "__main__":
    main()

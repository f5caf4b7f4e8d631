"""How long a results folder's protocols would take if every pass ran at full batch speed.

    .venv/bin/python scripts/pass_floor.py RESULTS [--arch resnet8 --width 16 --size 28]

Times a forward pass and a forward + input-gradient pass of the spec's network (batch 100,
laid out as evaluation lays it: ``models.base.place``), then, per protocol of ``robustlab timings
RESULTS``, prices its counted passes at those rates: ``backward`` passes as forward +
backward pairs, the other forwards alone. The floor is what the protocol's budgets cost at
the network's best speed on these cores; the measured minutes over it is what the rest
(small survivor batches, Python, the attacks' own arithmetic, CBPDN for CSC, whose solves are
no network passes) adds. Training is not in the records' counts (see docs/results.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robustlab.assemble import build_model
from robustlab.experiments.timings import summarize
from robustlab.models.base import place


def per_image_seconds(args: argparse.Namespace) -> tuple[float, float]:
    """(forward, forward + input gradient) seconds per image at batch 100, median of 5."""
    torch.manual_seed(0)
    net = build_model(args.arch, 10, args.channels, image_size=args.size, width=args.width)
    net = place(net, "cpu").eval()
    x, y = torch.rand(100, args.channels, args.size, args.size), torch.randint(0, 10, (100,))

    def gradient() -> None:
        point = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(net(point), y), point)

    def forward() -> None:
        with torch.no_grad():
            net(x)

    rates = []
    for run in (forward, gradient):
        run()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(10):
                run()
            times.append((time.perf_counter() - start) / 10 / 100)
        rates.append(sorted(times)[2])
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--arch", default="resnet8")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--size", type=int, default=28)
    args = parser.parse_args()
    summary = summarize(args.results)
    forward, gradient = per_image_seconds(args)
    print(
        f"per image at batch 100: forward {forward * 1e3:.3f} ms, with gradient "
        f"{gradient * 1e3:.3f} ms ({torch.get_num_threads()} threads)"
    )
    print("| protocol | measured min | forward | backward | floor min | measured / floor |")
    print("|---|---|---|---|---|---|")
    total_measured = total_floor = 0.0
    for name, seconds in sorted(summary.by_protocol.items(), key=lambda item: -item[1]):
        counted = summary.passes.get(name)
        if counted is None:
            continue
        floor = counted.backward * gradient + (counted.forward - counted.backward) * forward
        total_measured, total_floor = total_measured + seconds, total_floor + floor
        ratio = f"{seconds / floor:.1f}" if floor > 0 else "—"
        print(
            f"| {name} | {seconds / 60:.1f} | {counted.forward:,} | {counted.backward:,} | "
            f"{floor / 60:.1f} | {ratio} |"
        )
    print(
        f"| all records | {total_measured / 60:.1f} | | | {total_floor / 60:.1f} | "
        f"{total_measured / max(total_floor, 1e-9):.1f} |"
    )


if __name__ == "__main__":
    main()

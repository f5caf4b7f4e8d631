"""Train-step time of a defective model relative to the standard one (goal: ratio <= 1.05).

    python benchmarks/defect_overhead.py [--arch resnet18] [--batch 128] [--steps 20]

Both models have the same architecture; the defective one masks the bottom blocks
(keep 0.1). Steps alternate between the two models so that machine noise hits both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from robustlab.assemble import build_model as build
from robustlab.defenses.defective import DefectSpec


def step_time(
    model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> float:
    start = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    models = {
        "standard": build(args.arch, image_size=args.size),
        "defective": build(args.arch, image_size=args.size, defect=DefectSpec(0.1, "bottom")),
    }
    times: dict[str, list[float]] = {name: [] for name in models}
    opts = {n: torch.optim.SGD(m.to(args.device).parameters(), lr=0.01) for n, m in models.items()}
    for i in range(args.steps + 3):
        for name, model in models.items():
            elapsed = step_time(model.train(), opts[name], x, y)
            if i >= 3:  # warm-up steps are not timed
                times[name].append(elapsed)
    std, dfc = statistics.median(times["standard"]), statistics.median(times["defective"])
    print(
        f"device {args.device}, {args.arch}, batch {args.batch}, {args.size}x{args.size}, "
        f"median of {args.steps} steps"
    )
    print(f"{'model':<10} {'ms/step':>9}")
    print(f"{'standard':<10} {1000 * std:9.1f}\n{'defective':<10} {1000 * dfc:9.1f}")
    print(f"ratio defective/standard: {dfc / std:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()

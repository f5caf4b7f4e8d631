"""CBPDN iterations per solve: sporco's adaptive ρ against a fixed ρ, cold and warm-started.

    python scripts/csc_convergence.py [--images 32] [--dict dicts/fashion-mnist-64x8]

The figures of docs/csc.md ("Under attack"): on Fashion-MNIST test images, λ = 0.2, relative
tolerance 5e-3, the mean iterations per solve of cold solves under caps of 50, 200 and 1,000
with the adaptive ρ, then with a fixed ρ (cap 200) the iterations of warm solves after three
kinds of move (the same image, a Square-like 4 × 4 patch moved by 0.1, an APGD-like step of
±0.025 on every pixel), and how far the warm results are from cold solves of the same images.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from robustlab.data import load_dataset
from robustlab.defenses.csc import CBPDNOptions, CSCPurifier


def iterations(purifier: CSCPurifier, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The purified images and the mean iterations per solve of this call."""
    before = (purifier.counts.iterations, purifier.counts.solves)
    out = purifier(x)
    ran = purifier.counts.iterations - before[0], purifier.counts.solves - before[1]
    return out, ran[0] / max(ran[1], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--dict", default="dicts/fashion-mnist-64x8")
    args = parser.parse_args()
    x, _ = load_dataset("fashion-mnist", "test").subset(range(args.images)).tensors()
    generator = torch.Generator().manual_seed(0)

    def patch(z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        for i in range(len(z)):
            r, c = torch.randint(0, z.shape[-1] - 4, (2,), generator=generator).tolist()
            z[i, :, r : r + 4, c : c + 4] += 0.1 * torch.sign(torch.randn(1, generator=generator))
        return z.clamp(0, 1)

    def step(z: torch.Tensor) -> torch.Tensor:
        return (z + 0.025 * torch.sign(torch.randn(z.shape, generator=generator))).clamp(0, 1)

    with torch.no_grad():
        for cap in (50, 200, 1000):
            adaptive = CSCPurifier(args.dict, 0.2, CBPDNOptions(max_iter=cap))
            print(f"adaptive rho, cap {cap}: {iterations(adaptive, x)[1]:.1f} iterations/solve")
        fixed = CSCPurifier(args.dict, 0.2, CBPDNOptions(max_iter=200, auto_rho=False))
        print(f"fixed rho, cap 200, cold: {iterations(fixed, x)[1]:.1f} iterations/solve")
        moves: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "same": lambda z: z,
            "patch": patch,
            "step": step,
        }
        for name, move in moves.items():
            start = step(x)
            with fixed.warm_start():
                fixed(start)
                moved = move(start)
                warm, warm_iterations = iterations(fixed, moved)
            cold = fixed(moved)
            gap = (warm - cold).abs()
            print(
                f"fixed rho, warm after {name!r}: {warm_iterations:.1f} iterations/solve, "
                f"max |warm - cold| {gap.max():.3f}, mean {gap.mean():.4f}"
            )


if __name__ == "__main__":
    main()

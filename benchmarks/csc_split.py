"""CBPDN side by side (one single-thread part per thread) vs one solve, per map size.

    python benchmarks/csc_split.py [--rounds 5] [--iterations 60] [--any-size]

For each case (filters M, channels C, image size S, images N) the same random images are
solved over the same random dictionary with ``CBPDNOptions(side_by_side=False)`` and with
the default, alternately for ``--rounds`` rounds; the best milliseconds per
image-iteration of each are printed with the per-image size of the coefficient maps
(M · S² · 4 bytes). ``cbpdn`` splits only maps within ``cbpdn._SIDE_BY_SIDE`` (elsewhere
both runs are one solve); ``--any-size`` lifts that window, which re-measures it.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from robustlab.defenses.csc import CBPDNOptions, cbpdn
from robustlab.defenses.csc.cbpdn import FourierDictionary
from robustlab.defenses.csc.dictionary import random_dictionary

# the module, by name: the package exports the function ``cbpdn`` under the same name
solver = sys.modules["robustlab.defenses.csc.cbpdn"]
CASES = ((6, 3, 12, 32), (16, 1, 28, 64), (32, 3, 32, 64), (64, 1, 28, 64), (64, 3, 32, 128))


def best_ms(
    fourier: FourierDictionary, images: torch.Tensor, options: dict[str, CBPDNOptions], rounds: int
) -> dict[str, float]:
    """Best ms per image-iteration of each option set, the sets alternating each round."""
    best = dict.fromkeys(options, float("inf"))
    for _ in range(rounds):
        for name, option in options.items():
            start = time.perf_counter()
            result = cbpdn(fourier, images, 0.1, option)
            seconds = time.perf_counter() - start
            best[name] = min(best[name], seconds / float(result.iterations.sum()) * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=60, help="max ADMM iterations")
    parser.add_argument("--any-size", action="store_true", help="split at every map size")
    args = parser.parse_args()
    if args.any_size:
        solver._SIDE_BY_SIDE = (0, 1 << 62)
    print(f"threads {torch.get_num_threads()}, best of {args.rounds}, ms per image-iteration")
    for filters, channels, size, count in CASES:
        dictionary = random_dictionary(filters, channels, min(8, size // 2), seed=0)
        fourier = FourierDictionary(dictionary, (size, size))
        generator = torch.Generator().manual_seed(0)
        contrast = torch.linspace(0.2, 1.0, count).view(-1, 1, 1, 1)  # mixed iteration counts
        images = torch.rand(count, channels, size, size, generator=generator) * contrast - 0.3
        options = {
            "one": CBPDNOptions(max_iter=args.iterations, side_by_side=False),
            "side": CBPDNOptions(max_iter=args.iterations),
        }
        best = best_ms(fourier, images, options, args.rounds)
        print(
            f"M {filters:3d} C {channels} {size:3d} px {count:4d} images, maps "
            f"{filters * size * size * 4 / 1024:5.0f} KB: one solve {best['one']:.4f}, "
            f"side by side {best['side']:.4f} ({best['one'] / best['side']:.2f}x)"
        )


if __name__ == "__main__":
    main()

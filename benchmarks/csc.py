"""CBPDN throughput: robustlab's batched solver vs sporco's ConvBPDN (goal: >= 10x on CPU).

    python benchmarks/csc.py [--batch 256] [--sporco-images 16] [--dict dicts/cifar10-jpeg-64x8]

Both solve the high-pass parts of the same 32 × 32 colour images over the same
dictionary (64 filters 8 × 8 × 3; random unit-norm filters when no --dict),
λ = 0.2, with the same stopping rule (relative tolerance 5e-3, at most 200
iterations). sporco solves one image at a time (the method's released code
does); it is timed on the first --sporco-images images, ours on the whole batch.
The mean objective over the common images shows both solve the same problem.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from robustlab.defenses.csc import CBPDNOptions, cbpdn, load_dictionary, tikhonov_split
from robustlab.defenses.csc.cbpdn import FourierDictionary, objective
from robustlab.defenses.csc.dictionary import LearnedDictionary, random_dictionary


def images(count: int) -> torch.Tensor:
    try:
        from robustlab.data import load_dataset

        pixels, _ = load_dataset("cifar10-jpeg", "test").tensors()
        return pixels[:count]
    except Exception:  # no data here: textured random images keep the benchmark runnable
        return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def ours(
    filters: torch.Tensor, high: torch.Tensor, device: str, working: int | None
) -> tuple[float, torch.Tensor]:
    options = CBPDNOptions(max_iter=200, rel_tol=5e-3, batch_size=working)
    fourier = FourierDictionary(filters.to(device), (32, 32))
    signal = high.to(device)
    cbpdn(fourier, signal[:16], 0.2, CBPDNOptions(max_iter=2))  # warm-up
    start = time.perf_counter()
    codes = cbpdn(fourier, signal, 0.2, options).coefficients
    if signal.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, codes.cpu()


def sporco(filters: torch.Tensor, high: torch.Tensor) -> tuple[float, torch.Tensor]:
    from sporco.admm import cbpdn as sporco_cbpdn

    dictionary = filters.numpy().transpose(2, 3, 1, 0)  # (P, P, C, M)
    opts = {"Verbose": False, "MaxMainIter": 200, "RelStopTol": 5e-3, "FastSolve": True}
    codes, start = [], time.perf_counter()
    for image in high.numpy().transpose(0, 2, 3, 1):
        solver = sporco_cbpdn.ConvBPDN(dictionary, image, 0.2, sporco_cbpdn.ConvBPDN.Options(opts))
        codes.append(solver.solve().squeeze(axis=(2, 3)).transpose(2, 0, 1))
    return time.perf_counter() - start, torch.from_numpy(np.stack(codes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--working", type=int, help="images iterated at once (ours; default: the solver's)"
    )
    parser.add_argument("--sporco-images", type=int, default=16)
    parser.add_argument("--dict", type=Path, help="a learned 64x8x8x3 dictionary")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.dict:
        loaded = load_dictionary(args.dict)
        assert isinstance(loaded, LearnedDictionary), "use a single (not stratified) dictionary"
        filters = loaded.filters
    else:
        filters = random_dictionary(64, 3, 8, seed=0)
    _, high = tikhonov_split(images(args.batch))
    ours_time, ours_codes = ours(filters, high, args.device, args.working)
    sporco_time, sporco_codes = sporco(filters, high[: args.sporco_images])
    fourier = FourierDictionary(filters, (32, 32))
    common = high[: args.sporco_images]
    obj_ours = objective(fourier, ours_codes[: args.sporco_images], common, 0.2).mean()
    obj_sporco = objective(fourier, sporco_codes.float(), common, 0.2).mean()
    ours_rate, sporco_rate = len(high) / ours_time, args.sporco_images / sporco_time
    print(
        f"device {args.device}, threads {torch.get_num_threads()}, dictionary "
        f"{'random' if not args.dict else args.dict}, λ 0.2, tol 5e-3, max 200 iterations"
    )
    working = args.working or "default"
    print(f"robustlab: {ours_rate:8.1f} images/s ({len(high)} images, {working} at once)")
    print(f"sporco:    {sporco_rate:8.1f} images/s ({args.sporco_images} images)")
    print(f"speed-up:  {ours_rate / sporco_rate:8.2f}x (goal >= 10x on CPU)")
    print(f"mean objective on the common images: robustlab {obj_ours:.5f}, sporco {obj_sporco:.5f}")


if __name__ == "__main__":
    main()

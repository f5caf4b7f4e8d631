"""CBPDN throughput: robustlab's batched solver vs sporco's ConvBPDN (goal: >= 10x on CPU).

    python benchmarks/csc.py [--batch 256] [--sporco-images 16] [--dict dicts/cifar10-jpeg-64x8]
        [--size 32] [--working N] [--rounds 3]

Both solve the high-pass parts of the same 32 × 32 colour images over the same
dictionary (64 filters 8 × 8 × 3; random unit-norm filters when no --dict),
λ = 0.2, with the same stopping rule (relative tolerance 5e-3, at most 200
iterations); ``--size`` 64 or 224 upsamples the images (bilinear) to that size, and
``OMP_NUM_THREADS=1`` measures one thread (sporco's FFTW gets torch's thread count: by
default it would take every core). sporco solves one image at a time (as the
method's released code does), timed on --sporco-images images spread evenly over the
batch; ours solves the whole batch, in eager mode and with ``compile=True``. Images converge after
different numbers of iterations, so the speed-up is the ratio of
image-iterations per second; the iterations each solver ran on the common images
and their mean objectives show both solve the same problem the same way. The solvers
alternate for ``--rounds`` rounds, and the speed-up printed last is the median of the
rounds' ratios. First it times the two DFTs each iteration needs (forward of the x-step's
right-hand side, inverse of its solution), ours and sporco's: sporco's time per
image-iteration over ours bounds the speed-up any solver built on our DFTs can reach.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustlab.defenses.csc import CBPDNOptions, cbpdn, load_dictionary, tikhonov_split
from robustlab.defenses.csc.cbpdn import FourierDictionary, image_size, objective
from robustlab.defenses.csc.dictionary import LearnedDictionary, random_dictionary

LMBDA, MAX_ITER, REL_TOL = 0.2, 200, 5e-3


@dataclass
class Run:
    seconds: float
    iterations: torch.Tensor  # per image
    codes: torch.Tensor  # (B, M, H, W)

    def rates(self) -> tuple[float, float]:
        """Images per second and image-iterations per second."""
        return len(self.iterations) / self.seconds, float(self.iterations.sum()) / self.seconds


def images(count: int, size: int = 32) -> torch.Tensor:
    try:
        from robustlab.data import load_dataset

        pixels, _ = load_dataset("cifar10-jpeg", "test").tensors()
        pixels = pixels[:count]
    except Exception:  # no data here: textured random images keep the benchmark runnable
        pixels = torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    if size == 32:
        return pixels
    return torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear")


def ours(
    filters: torch.Tensor, high: torch.Tensor, device: str, options: CBPDNOptions
) -> tuple[float, Run]:
    """Seconds of the warm-up call (compilation, if any) and the timed run."""
    fourier = FourierDictionary(filters.to(device), image_size(high))
    signal = high.to(device)
    start = time.perf_counter()
    cbpdn(fourier, signal[:40], LMBDA, options)  # warm-up: compiles every working-set size
    warm_up, start = time.perf_counter() - start, time.perf_counter()
    result = cbpdn(fourier, signal, LMBDA, options)
    if signal.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return warm_up, Run(seconds, result.iterations.cpu(), result.coefficients.cpu())


def sporco(filters: torch.Tensor, high: torch.Tensor) -> Run:
    import sporco.fft
    from sporco.admm import cbpdn as sporco_cbpdn

    # sporco's FFTs (pyfftw) run on every core by default, whatever OMP_NUM_THREADS says:
    # give them the threads ours get, so a one-thread comparison is one thread on both sides
    sporco.fft.pyfftw_threads = torch.get_num_threads()
    dictionary = filters.numpy().transpose(2, 3, 1, 0)  # (P, P, C, M)
    opts = {"Verbose": False, "MaxMainIter": MAX_ITER, "RelStopTol": REL_TOL, "FastSolve": True}
    codes, iterations, start = [], [], time.perf_counter()
    for image in high.numpy().transpose(0, 2, 3, 1):
        options = sporco_cbpdn.ConvBPDN.Options(opts)
        solver = sporco_cbpdn.ConvBPDN(dictionary, image, LMBDA, options)
        codes.append(solver.solve().squeeze(axis=(2, 3)).transpose(2, 0, 1))
        iterations.append(solver.k)
    seconds = time.perf_counter() - start
    return Run(seconds, torch.tensor(iterations), torch.from_numpy(np.stack(codes)))


def fft_floor(maps: int, size: int, working: int = 8, repeats: int = 7) -> tuple[float, float]:
    """Milliseconds per image-iteration of the two DFTs every iteration needs: ours (the three
    transforms of ``x_step`` on a working set, without its copies and matmuls) and sporco's."""
    import sporco.fft

    target = torch.randn(working, maps, size, size)
    by_freq = torch.fft.rfft2(target).permute(2, 3, 0, 1).contiguous()
    half = torch.fft.ifft(by_freq, dim=0).permute(2, 3, 0, 1).contiguous()

    def our_dfts() -> None:
        torch.fft.rfft2(target)
        torch.fft.ifft(by_freq, dim=0)
        torch.fft.irfft(half, n=size, dim=-1)

    coefficients = np.random.default_rng(0).standard_normal((size, size, 1, 1, maps))
    coefficients = coefficients.astype(np.float32)  # sporco's layout of one image's maps

    def sporco_dfts() -> None:
        spectrum = sporco.fft.rfftn(coefficients, None, (0, 1))
        sporco.fft.irfftn(spectrum, (size, size), (0, 1))

    def best(call: Callable[[], None], per: int) -> float:
        call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(10):
                call()
            times.append((time.perf_counter() - start) / 10 / per)
        return 1e3 * min(times)

    return best(our_dfts, working), best(sporco_dfts, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sporco-images", type=int, default=16)
    parser.add_argument("--working", type=int, help="images iterated at once (ours)")
    parser.add_argument("--dict", type=Path, help="a learned 64x8x8x3 dictionary")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=32, help="image size (upsampled CIFAR-10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the solvers")
    args = parser.parse_args()
    if args.dict:
        loaded = load_dictionary(args.dict)
        assert isinstance(loaded, LearnedDictionary), "use a single (not stratified) dictionary"
        filters = loaded.filters
    else:
        filters = random_dictionary(64, 3, 8, seed=0)
    _, high = tikhonov_split(images(args.batch, args.size))
    common = torch.linspace(0, len(high) - 1, args.sporco_images).round().long()
    fourier = FourierDictionary(filters, image_size(high))
    print(
        f"device {args.device}, threads {torch.get_num_threads()}, {args.size} px, dictionary "
        f"{args.dict or 'random'}, λ {LMBDA}, tol {REL_TOL}, max {MAX_ITER} iterations"
    )
    fft_ours, fft_sporco = fft_floor(filters.shape[0], args.size)
    print(
        f"the two DFTs of an iteration alone: ours {fft_ours:.3f} ms per image-iteration, "
        f"sporco's {fft_sporco:.3f} ms"
    )
    # the solvers alternate, round after round: a shared host's speed drifts by tens of
    # per cent within minutes, and a ratio of two runs minutes apart measures the drift
    ratios: dict[str, list[float]] = {}
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}/{args.rounds}")
        reference = sporco(filters, high[common])
        _report("sporco", reference, reference, fourier, high[common], common)
        # no solver doing these DFTs can beat sporco by more than its iteration over them
        bound = 1e3 / reference.rates()[1] / fft_ours
        print(f"    at most {bound:.1f}x sporco while our DFTs alone take {fft_ours:.3f} ms")
        for label, compile_ in (("robustlab", False), ("robustlab compiled", True)):
            options = CBPDNOptions(MAX_ITER, REL_TOL, batch_size=args.working, compile=compile_)
            try:
                warm_up, run = ours(filters, high, args.device, options)
            except Exception as error:  # torch.compile needs a C++ compiler (Triton on GPUs)
                print(f"{label}: unavailable ({type(error).__name__}: {error})")
                continue
            ratios.setdefault(label, []).append(run.rates()[1] / reference.rates()[1])
            _report(label, run, reference, fourier, high[common], common)
            print(f"    warm-up {warm_up:.1f} s (compilation included)")
    for label, values in ratios.items():
        listed = ", ".join(f"{value:.2f}" for value in values)
        print(f"{label}: median {statistics.median(values):.2f}x sporco over rounds ({listed})")


def _report(
    label: str,
    run: Run,
    reference: Run,
    fourier: FourierDictionary,
    signal: torch.Tensor,
    common: torch.Tensor,
) -> None:
    images_rate, iterations_rate = run.rates()
    speed_up = iterations_rate / reference.rates()[1]
    mine = run.iterations if run is reference else run.iterations[common]
    codes = run.codes if run is reference else run.codes[common]
    same = int((mine == reference.iterations).sum())
    value = float(objective(fourier, codes.float(), signal, LMBDA).mean())
    print(
        f"{label:19s} {images_rate:7.1f} images/s {iterations_rate:8.0f} image-iterations/s "
        f"{speed_up:6.2f}x sporco (goal >= 10x on CPU) | {len(run.iterations)} images, "
        f"mean {run.iterations.float().mean():.1f} iterations; common images: "
        f"same iterations {same}/{len(common)}, mean objective {value:.5f}"
    )


if __name__ == "__main__":
    main()

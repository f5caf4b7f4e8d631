"""Cost curves: wall time and peak memory as the number of images and the image size grow.

    python benchmarks/scaling.py [--counts 64,256,1024,4096] [--sizes 32,64,128,224]
        [--device auto] [--write docs]

Four computations, each timed by :class:`robustlab.models.cost.Meter` (wall seconds, peak
resident memory sampled every 20 ms, on CUDA the peak allocated memory) once per point:

- ``purification``: CBPDN reconstruction (:class:`CSCPurifier`, 64 random filters 8 × 8 × 3,
  λ = 0.2) with a fixed 20 iterations per image (``rel_tol = 0``), so every point does the
  same work per pixel and the curve is the solver's scaling, not its convergence;
- ``strong``: the strong protocol (APGD-CE, APGD-T, Square; 5 steps, 1 target, 20 queries) on
  a ResNet-8 of width 16 (global pooling: any image size), on images labelled by the network
  (so every image is attacked);
- ``sfr``: one epoch of training three feature-regeneration units on that ResNet;
- ``transfer``: a transfer cell, PGD-5 adversarials on a source ResNet-8 scored on a target.

Each point runs in its own process (its peak memory is its own, torch's ~300 MiB included).
Images are random (the costs do not depend on the content at a fixed number of iterations).
The n-curve runs at 32 px, the size-curve at 64 images. For each curve the fitted exponent is
the least-squares slope of log(seconds) against log(n) (or log(pixels)): 1 is linear.
Purification is expected at ~1 in n and ~n log n in pixels (FFTs: slope a little above 1 in
pixels). ``--write docs`` writes the points (``docs/scaling.json``), the table
(``docs/scaling-table.md``) and the log-log plot (``docs/scaling.png``) that docs/benchmarks.md
shows; with ``--tasks`` naming some tasks, their points replace those already in
``scaling.json`` and the table and plot are drawn from all of them.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from robustlab.attacks.adversarial_set import attack_in_batches
from robustlab.data import Dataset
from robustlab.defenses.csc import CBPDNOptions, CSCPurifier
from robustlab.defenses.csc.dictionary import random_dictionary
from robustlab.defenses.regeneration import add_regeneration, auto_layers, train_frus
from robustlab.evaluation.strong import StrongConfig, strong_attack
from robustlab.io import write_json
from robustlab.models import build
from robustlab.models.base import predict
from robustlab.models.cost import Meter, count_passes

Task = Callable[[torch.Tensor, torch.Tensor, torch.device], None]


def _network(size: int, device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build("resnet8", num_classes=10, in_channels=3, image_size=size, width=16)
    return count_passes(model.to(device).eval())


def purification(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    options = CBPDNOptions(max_iter=20, rel_tol=0.0, auto_rho=False)
    purifier = CSCPurifier(random_dictionary(64, 3, 8, seed=0), lmbda=0.2, options=options)
    with torch.no_grad():
        purifier.to(device)(x)


def strong(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    """Labelled by the network itself: the protocol attacks only images it classifies
    correctly, and on random labels that would be a tenth of them (a curve of luck)."""
    config = StrongConfig(eps=8 / 255, steps=5, target_classes=1, queries=20)
    network = _network(x.shape[-1], device)
    strong_attack(network, x, predict(network, x).to(device), config)


def sfr(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    base = _network(x.shape[-1], device)
    defended = add_regeneration(base, auto_layers(base))
    pixels = (x.cpu() * 255).to(torch.uint8).numpy()
    data = Dataset(
        "random", "train", pixels, y.cpu().numpy(), tuple("0123456789"), (0.5,) * 3, (0.25,) * 3
    )
    delta = [torch.full_like(x[0], 8 / 255).cpu()]
    train_frus(
        defended,
        data,
        delta,
        8 / 255,
        epochs=1,
        batch_size=64,
        lr=1e-3,
        seed=0,
        device=device,
        quiet=True,
    )


def transfer(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    source, target = _network(x.shape[-1], device, 1), _network(x.shape[-1], device, 2)
    params = {"eps": 8 / 255, "step": 2 / 255, "steps": 5}
    adv = attack_in_batches("pgd", source, params, x, y, seed=0).adv
    predict(target, adv)


TASKS: dict[str, Task] = {
    "purification": purification,
    "strong": strong,
    "sfr": sfr,
    "transfer": transfer,
}


def measure(task: Task, n: int, size: int, device: torch.device) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=generator).to(device)
    y = torch.randint(0, 10, (n,), generator=generator).to(device)
    task(x[:2], y[:2], device)  # warm-up: first calls allocate and pick kernels
    with Meter() as cost:
        task(x, y, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return {
        "seconds": cost.seconds,
        "peak_rss_mb": cost.peak_rss_mb,
        "peak_cuda_mb": cost.peak_cuda_mb or 0.0,
    }


def _device(name: str) -> torch.device:
    return torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    )


def _point(name: str, n: int, size: int, device: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--device", device, "--point", name, str(n), str(size)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    point: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return point


def exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(ys) against log(xs)."""
    slope, _ = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(slope)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="64,256,1024,4096")
    parser.add_argument("--sizes", default="32,64,128,224")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--write", type=Path, help="folder for scaling-table.md and scaling.png")
    parser.add_argument("--point", nargs=3, metavar=("TASK", "N", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:  # one point, in its own process: its peak memory is its own
        name, n, size = args.point
        print(json.dumps(measure(TASKS[name], int(n), int(size), _device(args.device))))
        return
    device = _device(args.device)
    counts = [int(c) for c in args.counts.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    curves: dict[str, dict[str, list[dict[str, float]]]] = {}
    for name in args.tasks.split(","):
        if name not in TASKS:
            parser.error(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
        by_n = [{"x": n, **_point(name, n, 32, args.device)} for n in counts]
        by_size = [{"x": s, **_point(name, 64, s, args.device)} for s in sizes]
        curves[name] = {"n": by_n, "size": by_size}
        for axis, points in curves[name].items():
            for p in points:
                print(
                    json.dumps(
                        {"task": name, "axis": axis, **{k: round(v, 3) for k, v in p.items()}}
                    ),
                    flush=True,
                )
    if args.write is not None:
        curves = {**_earlier(args.write / "scaling.json"), **curves}
        write_json(args.write / "scaling.json", curves)
    lines = _table(curves, device, torch.get_num_threads())
    print("\n".join(lines))
    if args.write is not None:
        (args.write / "scaling-table.md").write_text("\n".join(lines) + "\n")
        _plot(curves, args.write / "scaling.png")


def _earlier(path: Path) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Curves of an earlier run, to merge a re-measured task into (files are data: checked)."""
    if not path.is_file():
        return {}
    try:
        curves = json.loads(path.read_text())
    except ValueError:
        curves = None
    if not _is_curves(curves):
        raise SystemExit(f"{path}: not a scaling.json of this benchmark; remove it")
    return {name: curves[name] for name in TASKS if name in curves}


def _is_curves(curves: object) -> bool:
    """Task -> {"n", "size"} -> points with finite, non-negative numbers."""
    if not isinstance(curves, dict):
        return False
    keys = ("x", "seconds", "peak_rss_mb")
    for name, axes in curves.items():
        if name not in TASKS or not isinstance(axes, dict) or set(axes) != {"n", "size"}:
            return False
        for points in axes.values():
            if not isinstance(points, list) or not all(
                isinstance(p, dict)
                and all(isinstance(p.get(k), (int, float)) and 0 <= p[k] < math.inf for k in keys)
                for p in points
            ):
                return False
    return True


def _table(
    curves: dict[str, dict[str, list[dict[str, float]]]], device: torch.device, threads: int
) -> list[str]:
    width = max(len(points) for axes in curves.values() for points in axes.values())
    lines = [
        f"Device: {device}, {threads} threads. Seconds (peak resident MiB) per point; "
        "exponent: slope of log seconds against log n (32 px) or log pixels (64 images).",
        "",
        "| computation | axis | " + " | ".join(["point"] * width) + " | exponent |",
        "|---|---|" + "---|" * (width + 1),
    ]
    for name, axes in curves.items():
        for axis, points in axes.items():
            xs = [p["x"] ** 2 if axis == "size" else p["x"] for p in points]
            slope = exponent(xs, [max(p["seconds"], 1e-6) for p in points])
            unit = "n" if axis == "n" else "px"
            cells = [
                f"{unit}={int(p['x'])}: {p['seconds']:.2f} s ({p['peak_rss_mb']:.0f})"
                for p in points
            ]
            lines.append(f"| {name} | {axis} | " + " | ".join(cells) + f" | {slope:.2f} |")
    return lines


def _plot(curves: dict[str, dict[str, list[dict[str, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_n, by_size) = plt.subplots(1, 2, figsize=(10, 4))
    for name, axes in curves.items():
        by_n.loglog(
            [p["x"] for p in axes["n"]], [p["seconds"] for p in axes["n"]], "o-", label=name
        )
        pixels = [p["x"] ** 2 for p in axes["size"]]
        by_size.loglog(pixels, [p["seconds"] for p in axes["size"]], "o-", label=name)
    by_n.set(xlabel="images (32 px)", ylabel="seconds", title="time against n")
    by_size.set(
        xlabel="pixels per image (64 images)", ylabel="seconds", title="time against image size"
    )
    for ax in (by_n, by_size):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

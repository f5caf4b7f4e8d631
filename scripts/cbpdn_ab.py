"""The CBPDN solver of an earlier revision against this tree's, alternated in one process.

    .venv/bin/python scripts/cbpdn_ab.py --rev 33834f7 [--data fashion-mnist] [--images 96]
        [--rounds 5] [--one-solve]

Both solve the high-pass parts of the same test images over the dataset's dictionary in
dicts/ (Fashion-MNIST: λ 0.2 with fixed ρ, as specs/three-defenses.toml; CIFAR-10 (JPEG-q75
copy): λ 0.2, sporco's adaptive ρ, as benchmarks/csc.py), one after the other for
``--rounds`` rounds (this host drifts by ±20 % within minutes). Printed: the best and median
milliseconds per image-iteration of each, and whether the two gave the same iterations and
the same coefficients bit for bit. ``--one-solve``: no side-by-side split. The earlier
solver is ``src/robustlab/defenses/csc/cbpdn.py`` at ``--rev`` (``git show``; it imports
only torch), loaded as its own module.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from robustlab.data import load_dataset
from robustlab.defenses.csc import CBPDNOptions, load_dictionary, tikhonov_split

SOLVER = "src/robustlab/defenses/csc/cbpdn.py"
DICTIONARIES = {
    "fashion-mnist": "dicts/fashion-mnist-64x8",
    "cifar10-jpeg": "dicts/cifar10-jpeg-64x8",
}


def solver_at(rev: str, folder: Path) -> ModuleType:
    """The solver module as it was at ``rev``."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{SOLVER}"], capture_output=True, text=True, check=False
    )
    if source.returncode:
        raise SystemExit(f"git show {rev}:{SOLVER} failed: {source.stderr.strip()}")
    path = folder / "cbpdn_at_rev.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("cbpdn_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the earlier revision (a commit)")
    parser.add_argument("--data", choices=sorted(DICTIONARIES), default="fashion-mnist")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--one-solve", action="store_true", help="no side-by-side split")
    args = parser.parse_args()
    pixels, _ = load_dataset(args.data, "test").tensors()
    _, high = tikhonov_split(pixels[: args.images].float(), 5.0)
    filters = load_dictionary(DICTIONARIES[args.data]).filters
    options = CBPDNOptions(auto_rho=args.data != "fashion-mnist", side_by_side=not args.one_solve)
    current = sys.modules["robustlab.defenses.csc.cbpdn"]  # the package exports the function
    with tempfile.TemporaryDirectory() as folder:
        solvers = {args.rev: solver_at(args.rev, Path(folder)), "this tree": current}
        times: dict[str, list[float]] = {name: [] for name in solvers}
        results = {}
        for _ in range(args.rounds):
            for name, module in solvers.items():
                fourier = module.FourierDictionary(filters, tuple(high.shape[-2:]))
                start = time.perf_counter()
                results[name] = module.cbpdn(fourier, high, 0.2, options)
                seconds = time.perf_counter() - start
                times[name].append(seconds / float(results[name].iterations.sum()) * 1e3)
    old, new = results[args.rev], results["this tree"]
    print(
        f"{args.data}, {args.images} images, {'one solve' if args.one_solve else 'split'}, "
        f"threads {torch.get_num_threads()}, {args.rounds} rounds, ms per image-iteration"
    )
    for name, values in times.items():
        print(f"  {name:10s} best {min(values):.3f}  median {statistics.median(values):.3f}")
    same = torch.equal(old.iterations, new.iterations) and torch.equal(
        old.coefficients, new.coefficients
    )
    print(f"  same iterations and coefficients bit for bit: {same}")


if __name__ == "__main__":
    main()

"""glibc's default thresholds against freed memory kept in the process (robustlab.allocator).

    python benchmarks/allocator.py [--rounds 5]

The specs' three costliest kinds of work, each in a fresh process (an allocator is set per
process), the two settings alternating round after round (this host drifts by ±20 % within
minutes): a training step of the specs' ResNet-8 (width 16, batch 128, 1×28×28), the input
gradient an attack takes (batch 100) and a CBPDN solve of 32 Fashion-MNIST images over the
spec's dictionary (64 filters 8 × 8, λ 0.2, fixed ρ). Printed per task: the median
milliseconds and minor page faults (pages the kernel zero-filled) of each setting and the
median of the rounds' ratios (> 1: keeping freed memory is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from robustlab.allocator import USER_SETTINGS

# One round of one setting: each task's best of three timings and its faults per call.
WORKER = """
import json, resource, sys, time
import torch
import torch.nn.functional as F
from robustlab import allocator
from robustlab.data import load_dataset
from robustlab.defenses.csc import CBPDNOptions, cbpdn, load_dictionary, tikhonov_split
from robustlab.defenses.csc.cbpdn import FourierDictionary
from robustlab.models import build
if sys.argv[1] == "kept":
    assert allocator.keep_freed_memory()
torch.manual_seed(0)
net = build("resnet8", width=16, image_size=28, in_channels=1)
sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
x, y = torch.rand(128, 1, 28, 28), torch.arange(128) % 10
def train():
    net.train(); sgd.zero_grad(); F.cross_entropy(net(x), y).backward(); sgd.step()
def gradient():
    net.eval(); images = x[:100].clone().requires_grad_()
    torch.autograd.grad(F.cross_entropy(net(images), y[:100]), images)
pixels, _ = load_dataset("fashion-mnist", "test").tensors()
_, high = tikhonov_split(pixels[:32].float(), 5.0)
dictionary = load_dictionary("dicts/fashion-mnist-64x8").filters
fourier = FourierDictionary(dictionary, (28, 28))
def solve():
    cbpdn(fourier, high, 0.2, CBPDNOptions(auto_rho=False))
out = {}
for name, task, calls in (("train", train, 8), ("gradient", gradient, 10), ("cbpdn", solve, 2)):
    task()
    best, faults = float("inf"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            task()
        best = min(best, (time.perf_counter() - start) / calls)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (3 * calls)
    out[name] = (best * 1e3, faults)
print(json.dumps(out))
"""


def one_round(setting: str) -> dict[str, tuple[float, float]]:
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, setting], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"the {setting} worker failed:\n{done.stderr}")
    result: dict[str, tuple[float, float]] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = [{s: one_round(s) for s in ("default", "kept")} for _ in range(args.rounds)]
    print(f"{args.rounds} alternated rounds, fresh processes; ms per call and page faults")
    for task in rounds[0]["default"]:
        cells = []
        for setting in ("default", "kept"):
            ms = statistics.median(r[setting][task][0] for r in rounds)
            faults = statistics.median(r[setting][task][1] for r in rounds)
            cells.append(f"{setting} {ms:8.1f} ms {faults:8.0f} faults")
        ratio = statistics.median(r["default"][task][0] / r["kept"][task][0] for r in rounds)
        print(f"{task:9s} {' | '.join(cells)} | {ratio:.2f}x")


if __name__ == "__main__":
    main()

"""Images per second on whatever device is present: training steps and PGD attack steps.

    python benchmarks/throughput.py [--arch resnet18] [--batch 128] [--steps 10]

Training is timed plain, with channels_last, with channels_last + bf16 autocast,
and (``--compile``) with torch.compile; PGD-10 (float32) is timed on the same model.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from robustlab.attacks import PGD
from robustlab.models import build


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(
    arch: str,
    batch: int,
    steps: int,
    device: torch.device,
    channels_last: bool,
    bf16: bool,
    compile_model: bool,
) -> float:
    torch.manual_seed(0)
    model = build(arch).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    run = torch.compile(model) if compile_model else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    for i in range(steps + 3):  # 3 warm-up steps (and compilation) are not timed
        if i == 3:
            sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(run(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def attack_rate(arch: str, batch: int, device: torch.device) -> float:
    model = build(arch).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    attack = PGD(model, 8 / 255, 2 / 255, 10)
    attack(x, y)
    sync(device)
    start = time.perf_counter()
    attack(x, y)
    sync(device)
    return batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, {torch.get_num_threads()} threads, {args.arch}, batch {args.batch}, 32x32")
    variants = [
        ("fp32", False, False, False),
        ("channels_last", True, False, False),
        ("channels_last + bf16", True, True, False),
    ]
    if args.compile:
        variants.append(("channels_last + bf16 + compile", True, True, True))
    base = None
    for label, cl, bf16, comp in variants:
        rate = train_rate(args.arch, args.batch, args.steps, device, cl, bf16, comp)
        base = base or rate
        print(f"train {label:32s} {rate:9.1f} images/s  ({rate / base:.2f}x fp32)")
    rate = attack_rate(args.arch, args.batch, device)
    print(f"PGD-10 attack (float32)          {rate:9.1f} images/s")


if __name__ == "__main__":
    main()

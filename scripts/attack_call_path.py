"""The call stack from ``robustlab attack`` to the kernel (the first input gradient), as
files and functions: the measure of issue #24's "following the attack command's arguments
from cli.py to the kernel". Run it on any trained run folder, e.g.:

    python scripts/attack_call_path.py --source RUN --attack pgd --eps 8 --step 2 --steps 2 \
        --dataset digits --n 8 --out /tmp/set.npz --quiet --force
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import torch

import robustlab.attacks.base as base
import robustlab.attacks.pgd as pgd
from robustlab.cli import main

STACKS: list[list[tuple[str, str]]] = []
_gradient = base.input_gradient


def _spy(*args: Any, **kwargs: Any) -> torch.Tensor:
    if not STACKS:  # the first call's stack: cli.py down to here
        frames = [f for f in traceback.extract_stack() if "src/robustlab/" in f.filename]
        STACKS.append([(f.filename.split("src/robustlab/")[-1], f.name) for f in frames])
    return _gradient(*args, **kwargs)


def measure(stack: list[tuple[str, str]]) -> tuple[int, int]:
    """(files on the stack, returns to a file already left) of a stack of (file, function)."""
    files = [f for i, (f, _) in enumerate(stack) if i == 0 or stack[i - 1][0] != f]
    return len(set(files)), len(files) - len(set(files))


if __name__ == "__main__":
    base.input_gradient = pgd.input_gradient = _spy  # type: ignore[assignment]
    code = main(["attack", *sys.argv[1:]])
    if not STACKS:
        sys.exit("no gradient was taken")
    stack = [*STACKS[0], ("attacks/base.py", "input_gradient")]
    for file, function in stack:
        print(f"{file:32} {function}")
    files, returns = measure(stack)
    print(f"{files} files, {returns} returns to a file already left")
    sys.exit(code)

"""CSC under attack: the strong protocol's cell with cold and warm-started CBPDN solves.

    python benchmarks/csc_attack.py --run RESULTS/runs/standard-* --defense RESULTS/defenses/csc-*
        [--n 50] [--steps 100] [--queries 1000] [--target-classes 3] [--eps 8]

``--run`` and ``--defense`` are the standard model and the prepared CSC folder of a run of
``specs/three-defenses.toml`` (or ``specs/verdicts.toml``). The same fine-tuned classifier is
attacked behind four purifiers: the spec's solver (sporco's adaptive ρ, at most 50
iterations) and a fixed ρ (at most 200), each with cold solves (every solve from zero) and
with warm starts (:mod:`robustlab.defenses.csc.warm`). Printed per setting: wall seconds,
solves, ADMM iterations per solve (all, and the warm-started ones), robust accuracy after each
attack, and how many images' outcomes differ from the cold solve of the same solver.
Scoring is always a cold solve: warm starts only change the attacker's queries.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from robustlab.data import load_dataset
from robustlab.defenses.base import ZeroGradient
from robustlab.defenses.csc.defense import CSCDefense
from robustlab.defenses.csc.purifier import CSCPurifier
from robustlab.evaluation.strong import StrongConfig, strong_attack
from robustlab.io import load_tensors
from robustlab.runs import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--defense", type=Path, required=True)
    parser.add_argument("--dict", default="dicts/fashion-mnist-64x8")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--eps", type=float, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--target-classes", type=int, default=3)
    parser.add_argument("--settings", default="auto50-cold,auto50-warm,fixed200-cold,fixed200-warm")
    args = parser.parse_args()
    x, y = load_dataset(args.dataset, "test").subset(range(args.n)).tensors()
    config = StrongConfig(
        eps=args.eps / 255, steps=args.steps, queries=args.queries,
        target_classes=args.target_classes,
    )  # fmt: skip
    defense = CSCDefense(args.dict, lmbda=0.2, finetune_epochs=2, max_iter=50)
    defended = defense.wrap(load(args.run), args.defense)
    survivors: dict[str, torch.Tensor] = {}
    for setting in args.settings.split(","):
        solver, start = setting.split("-")
        auto = solver.startswith("auto")
        variant = replace(
            defense, max_iter=int(solver.removeprefix("auto" if auto else "fixed")), auto_rho=auto
        )
        purifier: CSCPurifier = variant.purifier()
        purifier.warm_capacity = 512 if start == "warm" else 0
        defended.transform = ZeroGradient(purifier)
        with tempfile.TemporaryDirectory() as store:
            began = time.perf_counter()
            result = strong_attack(defended, x, y, config, seed=0, store=Path(store))
            seconds = time.perf_counter() - began
            last = Path(store) / f"{config.attacks[-1]}.safetensors"
            robust = load_tensors(last)[0]["robust"].bool()  # scored on cold solves
        counts = purifier.counts
        cold = survivors.setdefault(solver, robust)
        warm_iterations = counts.warm_iterations / max(counts.warm_solves, 1)
        print(json.dumps({
            "setting": setting, "seconds": round(seconds, 1), "solves": counts.solves,
            "iterations_per_solve": round(counts.iterations / max(counts.solves, 1), 1),
            "warm_solves": counts.warm_solves,
            "iterations_per_warm_solve": round(warm_iterations, 1),
            "after": {k: v.to_dict() for k, v in result.after.items()},
            "outcomes_differing_from_cold": int((robust != cold).sum()),
        }))  # fmt: skip


if __name__ == "__main__":
    main()

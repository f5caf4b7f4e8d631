"""Evaluate an SFR directory against several universal attacks and print a markdown table.

    .venv/bin/python scripts/sfr_table.py RUN_SFR [--n 1000]

Rows: the training attack (UAP) at ξ = 10, 15, 20, 25; unseen attacks (sPGD, FFF,
GAP) at ξ = 10; and the white-box secondary attack (UAP against baseline + FRUs).
Each perturbation is cached in RUN_SFR/perturbations and reused.
"""

from __future__ import annotations

import argparse
import time

from robustlab.experiments.sfr import evaluate_sfr

ROWS = [
    ("uap", 10, "baseline"),
    ("uap", 15, "baseline"),
    ("uap", 20, "baseline"),
    ("uap", 25, "baseline"),
    ("spgd", 10, "baseline"),
    ("fff", 10, "baseline"),
    ("gap", 10, "baseline"),
    ("uap", 10, "defended"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sfr_dir")
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    print(
        "| attack | ξ (/255) | computed on | clean top-1 base / SFR | fooling rate base / SFR "
        "| restoration accuracy base | restoration accuracy SFR | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for attack, xi, against in ROWS:
        start = time.time()
        r = evaluate_sfr(args.sfr_dir, attack, xi / 255, against=against, n=args.n)
        base, sfr = r["baseline"], r["defended"]
        clean = f"{100 * base['clean']:.1f}% / {100 * sfr['clean']:.1f}%"
        fooled = f"{100 * base['fooling_rate']:.1f}% / {100 * sfr['fooling_rate']:.1f}%"
        restored = f"{base['restoration']:.3f} | **{sfr['restoration']:.3f}**"
        seconds = time.time() - start
        print(
            f"| {attack} | {xi} | {against} | {clean} | {fooled} | {restored} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

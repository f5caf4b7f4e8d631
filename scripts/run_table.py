"""Print a markdown table of runs: final test accuracy, per-epoch accuracies and time.

.venv/bin/python scripts/run_table.py runs/foundation/*
"""

from __future__ import annotations

import sys

from robustlab.runs import read_meta


def main(paths: list[str]) -> None:
    print("| run | dataset | arch | defect | epochs | test accuracy | per epoch | train time |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        meta = read_meta(path)
        model, history = meta["model"], meta["history"]
        defect = model["defect"]
        defect_text = f"{defect['blocks']}:{defect['keep_prob']:g}" if defect else "—"
        per_epoch = ", ".join(f"{100 * h['test_accuracy']:.1f}" for h in history)
        minutes = sum(h["seconds"] for h in history) / 60
        accuracy = 100 * meta["test_accuracy"]
        print(
            f"| `{path}` | {meta['dataset']['name']} | {model['arch']} | {defect_text} | "
            f"{meta['epoch']} | **{accuracy:.2f}%** | {per_epoch} | {minutes:.0f} min |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])

"""Copy a results folder without some of its cells, so that `robustlab run` recomputes them.

    .venv/bin/python scripts/drop_cells.py RESULTS COPY --protocol strong \
        --targets standard,adv_training,thermometer16
    robustlab run SPEC --out COPY --quiet && robustlab timings COPY

For A/B measurements of one piece of a run (two code versions, two settings) on the cells a
finished run already has: the copy keeps every model, defense and other record, so only the
dropped cells recompute, and its timing log starts empty, so ``robustlab timings COPY``
times them alone. The A/B of the memory layout in docs/results.md (2026-12-06) ran this four
times, alternating the code before the change (a worktree at 51b7e6b, put first on
``PYTHONPATH``) and after it.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from robustlab.experiments.timings import LOG_FILE
from robustlab.io import read_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("copy", type=Path, help="a new folder (refused if it exists)")
    parser.add_argument("--protocol", required=True, help="the records' protocol kind")
    parser.add_argument("--targets", required=True, help="comma-separated model names")
    args = parser.parse_args()
    if not (args.results / "records").is_dir():
        raise SystemExit(f"{args.results}: no records/; give a `robustlab run` results folder")
    if args.copy.exists():
        raise SystemExit(f"{args.copy} exists; name a new folder (one writer per folder)")
    targets = set(args.targets.split(","))
    shutil.copytree(args.results, args.copy, symlinks=True)
    dropped = 0
    for path in sorted((args.copy / "records").glob("*.json")):
        record = read_json(path)
        if record.get("protocol") == args.protocol and record.get("target") in targets:
            path.unlink()
            for folder in args.copy.iterdir():  # the cell's resumable files (strong/KEY/, ...)
                shutil.rmtree(folder / path.stem, ignore_errors=True)
            dropped += 1
    (args.copy / LOG_FILE).unlink(missing_ok=True)
    print(f"{args.copy}: dropped {dropped} {args.protocol} cells of {', '.join(sorted(targets))}")


if __name__ == "__main__":
    main()

"""Re-run a spec's verdict cells with another attack seed (the spec's seed stays for training
and data): how much a verdict hangs on the attacks' random draws.

    cp -a RESULTS COPY && rm -r COPY/records/<cell>.json COPY/verdict/<cell>
    python scripts/verdict_seed.py specs/three-defenses.toml COPY --seed 1

Every cell the copy still holds is read back as it is; the removed ones are computed again,
their attacks seeded with ``--seed`` (the cell keys do not carry it: use a copy, never the
results folder itself). docs/csc.md used it on the CSC verdict cell.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from robustlab.cli import main
from robustlab.evaluation import escalation


def reseed(seed: int) -> None:
    """Make every :class:`~robustlab.evaluation.escalation.Evaluation` use ``seed``."""
    init = escalation.Evaluation.__init__

    def seeded(self: escalation.Evaluation, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**kwargs, "seed": seed})

    escalation.Evaluation.__init__ = seeded  # type: ignore[method-assign]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("out", type=Path, help="a copy of the results folder, less the cells")
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    if not args.out.is_dir():
        sys.exit(f"{args.out}: no results folder; copy the spec's results there first")
    reseed(args.seed)
    sys.exit(main(["run", str(args.spec), "--out", str(args.out)]))

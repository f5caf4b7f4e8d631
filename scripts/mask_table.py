"""Print the markdown table of docs/defective.md: which layers `bottom` masks per architecture.

.venv/bin/python scripts/mask_table.py > /tmp/table.md
"""

from __future__ import annotations

import torch

from robustlab.defenses.defective import DefectSpec, masks
from robustlab.models import available, build


def main() -> None:
    columns = [
        "architecture",
        "blocks (paper)",
        "`bottom`",
        "masked layers (32×32×3 input)",
        "masked neurons",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|")
    for arch in available():
        model = build(arch, defect=DefectSpec(0.1, "bottom"))
        found = masks(model)
        shown = found if len(found) <= 10 else [*found[:3], ("…", None), *found[-2:]]
        names = ", ".join(
            n if m is None else f"`{n}` {'×'.join(map(str, m.shape))}" for n, m in shown
        )
        total = sum(int(m.numel()) for _, m in found)
        blocks = ",".join(map(str, model.bottom))
        print(
            f"| {arch} | 0–{model.num_blocks - 1} | {blocks} | {len(found)}: {names} | {total:,} |"
        )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()

"""Print the markdown table of docs/defective.md: which layers `bottom` masks per architecture.

.venv/bin/python scripts/mask_table.py > /tmp/table.md
"""

from __future__ import annotations

import torch

from robustlab.defenses.defective import DefectSpec, masks
from robustlab.models import available, build


def main() -> None:
    columns = ["architecture", "blocks", "masked layers for `bottom` (32×32×3 input)",
               "mask shapes", "masked neurons"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|")
    for arch in available():
        model = build(arch, defect=DefectSpec(0.1, "bottom"))
        found = masks(model)
        names = ", ".join(f"`{n}`" for n, _ in found)
        shapes = ", ".join("×".join(map(str, m.shape)) for _, m in found)
        total = sum(int(m.numel()) for _, m in found)
        print(f"| {arch} | 0–{len(model.blocks) - 1} | {names} | {shapes} | {total:,} |")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()

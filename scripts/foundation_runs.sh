#!/usr/bin/env bash
# The runs recorded in docs/foundation.md: ResNet-8 (width 16), standard vs bottom:0.1,
# on full Fashion-MNIST and the CIFAR-10 JPEG copy. Resumable: re-run to continue.
set -euo pipefail
OUT=${OUT:-runs/foundation}
EPOCHS=${EPOCHS:-10}
for dataset in fashion-mnist cifar10-jpeg; do
  for variant in standard defective; do
    defect=(); [ "$variant" = defective ] && defect=(--defect bottom:0.1)
    .venv/bin/robustlab train --dataset "$dataset" --arch resnet8 --width 16 "${defect[@]}" \
      --epochs "$EPOCHS" --lr 0.1 --seed 0 --quiet --resume --out "$OUT/$dataset-$variant"
  done
done

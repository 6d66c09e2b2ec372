#!/usr/bin/env bash
# One arm of the capacity comparison (offline layout, stage 1), equal minutes each.
# usage: eval/general_arm.sh NAME MINUTES [exposst-train flags]   (TRAIN=pairs.tsv, OUT=folder)
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=$1; MIN=$2; shift 2
D=../shared/data
exec nice -n 5 .venv/bin/exposst-train --model default --pairs "${TRAIN:-runs/general/train.tsv}" \
  --dev-source $D/iwslt2017-ende/dev.en --dev-target $D/iwslt2017-ende/dev.de \
  --eval-sentences 100 --eval-decode 0 --eval-every 100 \
  --layout offline --epochs 1 --batch-tokens 2048 --schedule cosine --warmup 50 \
  --threads 2 --seed 0 --save-every 100 --keep-checkpoints 0 --save-dtype bfloat16 \
  --max-minutes "$MIN" --no-progress -o "${OUT:-runs/general}/$NAME" "$@"

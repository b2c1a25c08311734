#!/usr/bin/env bash
# The main job, end to end on built-in synthetic LUNA16-format data (about 20 minutes on 2 CPU
# cores): set up .venv, synthesise scans, fill the crop cache, train with the default recipe,
# score the held-out scans, evaluate them by the LUNA16 rules and write an HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
luna() { .venv/bin/luna "$@"; }

DATA=${LUNA_DEMO_DATA:-data/synth}
CACHE=${LUNA_CACHE_DIR:-cache}
EPOCHS=${LUNA_DEMO_EPOCHS:-5}
EPOCH_SIZE=${LUNA_DEMO_EPOCH_SIZE:-10000}

if [ ! -f "$DATA/candidates.csv" ]; then
  luna synth --out "$DATA" --series 32 --seed 0
fi
luna prepcache --data-dir "$DATA" --cache-dir "$CACHE" --num-workers 2
luna train --data-dir "$DATA" --cache-dir "$CACHE" --val-stride 4 --epochs "$EPOCHS" \
  --epoch-size "$EPOCH_SIZE" --num-workers 2 demo
RUN=$(ls -td runs/luna/*-demo | head -n 1)
luna predict --checkpoint "$RUN" --data-dir "$DATA" --split val --out "$RUN/predictions_val.csv"
# The predictions file lists exactly the held-out scans: use it as the series list.
luna evaluate --predictions "$RUN/predictions_val.csv" --annotations "$DATA/annotations.csv" \
  --excluded "$DATA/annotations_excluded.csv" --series-list "$RUN/predictions_val.csv" \
  --out-dir "$RUN/eval"
luna report "$RUN"
echo
echo "Run directory: $RUN"
echo "  evaluation:  $RUN/eval/metrics.json (+ PNG plots)"
echo "  report:      $RUN/report.html"
echo "  TensorBoard: .venv/bin/tensorboard --logdir runs/luna"

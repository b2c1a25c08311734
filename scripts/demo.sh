#!/usr/bin/env bash
# The main job, end to end on built-in synthetic LUNA16-format data, on 2 CPU cores: set up .venv,
# synthesise scans, fill the crop cache, train the classifier with the default recipe, score the
# held-out scans' candidates (the classification track), train the segmentation model, detect
# nodules in the held-out scans from the scans alone (the detection track), evaluate both by the
# LUNA16 rules and write an HTML report showing both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
luna() { .venv/bin/luna "$@"; }

# LUNA_DEMO_QUICK=1: a first look in a few minutes. Every step runs and every table and the
# report are written, on 8 scans (2 held out) with short trainings, so its figures are far
# below the full run's: it shows what luna does, not how well.
if [ -n "${LUNA_DEMO_QUICK:-}" ]; then
  NAME=quick DEFAULT_DATA=data/demo_quick SERIES=8 DEFAULT_EPOCHS=2 DEFAULT_EPOCH_SIZE=2000 SEG_FLAGS="--epochs 1 --epoch-size 1000"
else
  NAME=demo DEFAULT_DATA=data/demo SERIES=48 DEFAULT_EPOCHS=5 DEFAULT_EPOCH_SIZE=10000 SEG_FLAGS=""
fi
DATA=${LUNA_DEMO_DATA:-$DEFAULT_DATA}
CACHE=${LUNA_CACHE_DIR:-cache}
EPOCHS=${LUNA_DEMO_EPOCHS:-$DEFAULT_EPOCHS}
EPOCH_SIZE=${LUNA_DEMO_EPOCH_SIZE:-$DEFAULT_EPOCH_SIZE}

# Scans at LUNA16's resolution (512 x 512 pixels of 0.6-0.9 mm), every third one from another
# scanner (slices, pixel, kernel, HU offset): a model trained on them holds better on scans unlike
# its own (docs/experiments.md, "Scans at LUNA16's resolution").
if [ ! -f "$DATA/candidates.csv" ]; then
  luna synth --out "$DATA" --series "$SERIES" --seed 0 --size full --acquisition mixed --workers 2
fi
luna prepcache --data-dir "$DATA" --cache-dir "$CACHE" --num-workers 2
luna train --data-dir "$DATA" --cache-dir "$CACHE" --val-stride 4 --epochs "$EPOCHS" \
  --epoch-size "$EPOCH_SIZE" --num-workers 2 "$NAME"
RUN=$(ls -td runs/luna/*_??.??.??-"$NAME" | head -n 1)
luna predict --checkpoint "$RUN" --data-dir "$DATA" --split val --out "$RUN/predictions_val.csv"
# The predictions file lists exactly the held-out scans: use it as the series list.
luna evaluate --predictions "$RUN/predictions_val.csv" --annotations "$DATA/annotations.csv" \
  --excluded "$DATA/annotations_excluded.csv" --series-list "$RUN/predictions_val.csv" \
  --out-dir "$RUN/eval"

# The detection track: a segmentation model trained on the same training scans (the same
# --val-stride holds out the same scans), then scan -> findings on the held-out scans.
# shellcheck disable=SC2086  # SEG_FLAGS is a list of flags
luna train-seg --data-dir "$DATA" --cache-dir "$CACHE" --val-stride 4 --num-workers 2 $SEG_FLAGS "$NAME"
SEG=$(ls -td runs/seg/*_??.??.??-"$NAME" | head -n 1)
luna detect --segmentation "$SEG" --classifier "$RUN" --data-dir "$DATA" --split val \
  --out "$RUN/detections_val.csv"
# Scans without a finding must still count their nodules as missed: the series list is the
# held-out scans, i.e. those of the classification track's file.
luna evaluate --predictions "$RUN/detections_val.csv" --annotations "$DATA/annotations.csv" \
  --excluded "$DATA/annotations_excluded.csv" --series-list "$RUN/predictions_val.csv" \
  --out-dir "$RUN/eval_detect"
luna report "$RUN"
echo
echo "Run directory: $RUN"
echo "  evaluation:  $RUN/eval/metrics.json (+ PNG plots); detection track: $RUN/eval_detect/"
echo "  findings:    $RUN/detections_val.csv, one JSON per scan in $RUN/detections_val_findings/"
echo "  segmentation run: $SEG"
echo "  report:      $RUN/report.html"
echo "  TensorBoard: .venv/bin/tensorboard --logdir runs"

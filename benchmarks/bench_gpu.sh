#!/usr/bin/env bash
# The GPU benchmark in one command (<= 5 min): full-size synthetic scans, training samples/s,
# predict candidates/s and peak memory, default recipe against the reference in float32.
# It uses the machine's own CUDA build of PyTorch (not .venv, whose torch is a CPU build) and luna
# from this checkout. Results: benchmarks/results/bench_gpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for module in torch SimpleITK scipy sklearn matplotlib tqdm tensorboard; do
  if ! "$PY" -c "import $module" 2>/dev/null; then
    echo "bench_gpu: $PY cannot import $module; install it (pip install SimpleITK ...) or set PYTHON" >&2
    exit 1
  fi
done
exec "$PY" benchmarks/bench_gpu.py "$@"

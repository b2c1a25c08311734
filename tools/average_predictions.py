"""Average several LUNA16 results files of the same candidates (an ensemble of models).

Each input must be written with `luna predict --nms-mm 0` (the classifiers' own scores). The
mean of the models' logits, log(p / (1 - p)), is turned back into a probability and then
suppressed as `luna predict` does by default, so the output can go straight to `luna evaluate`:

    .venv/bin/python tools/average_predictions.py ensemble.csv run0/p.csv run1/p.csv run2/p.csv \\
        [--nms-mm 10]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from luna.errors import LunaError  # noqa: E402
from luna.luna16.csvfiles import read_predictions, write_predictions  # noqa: E402
from luna.eval.suppression import NMS_RADIUS_MM, suppress_neighbours  # noqa: E402

# luna writes probabilities in full (float64, from the logit margin), so only a margin above ~37
# reads as exactly 1.0, which must not become an infinite logit. A wider clip would tie the
# surest candidates again.
EPS = 1e-15


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="results CSV to write")
    parser.add_argument("inputs", type=Path, nargs="+", help="results CSVs of the same candidates")
    parser.add_argument("--nms-mm", type=float, default=NMS_RADIUS_MM, help="suppression radius; 0 = off")
    args = parser.parse_args()

    try:
        return average(args.out, args.inputs, args.nms_mm)
    except LunaError as exc:  # a missing or malformed file: one line, no traceback
        sys.exit(f"error: {exc}")


def average(out: Path, inputs: list[Path], nms_mm: float) -> int:
    first = read_predictions(inputs[0])
    keys = list(zip(first.series_uids.tolist(), map(tuple, first.centers_xyz.tolist())))
    logits = np.zeros(len(keys))
    for path in inputs:
        pred = read_predictions(path)
        row_of = {key: i for i, key in enumerate(zip(pred.series_uids.tolist(), map(tuple, pred.centers_xyz.tolist())))}
        missing = [key for key in keys if key not in row_of]
        if missing or len(row_of) != len(keys):
            sys.exit(f"error: {path} does not hold the same candidates as {inputs[0]}")
        p = np.clip(pred.probabilities[[row_of[key] for key in keys]], EPS, 1 - EPS)
        logits += np.log(p / (1 - p))
    probabilities = 1 / (1 + np.exp(-logits / len(inputs)))
    probabilities = suppress_neighbours(first.centers_xyz, probabilities, nms_mm, first.series_uids)
    write_predictions(out, first.series_uids, first.centers_xyz, probabilities)
    print(f"wrote {out}: {len(keys)} candidates, mean of {len(inputs)} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a model fails on scans of tools/other_phantoms.py: its nodules by kind and size, found or not.

The other generator writes what it drew to ``phantom_nodules.csv`` (every nodule, with its kind).
For each results file given (a run's ``luna predict`` output on that data set) and each nodule,
this finds the best-ranked candidate of its scan inside its radius, and prints per kind and per
size the count of nodules summed over the files, how many are among the ``--top`` best-scored
candidates of their scan (what CPM at low false-positive rates reads), and how many score at
least 0.5.

    .venv/bin/python tools/other_misses.py data/h8other RUN_A/heldout/h8other.csv [RUN_B/... ...] [--top 4]
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from luna.errors import LunaError  # noqa: E402
from luna.luna16.csvfiles import Predictions, read_predictions  # noqa: E402

SIZES_MM = ((0.0, 6.0, "under 6 mm"), (6.0, 10.0, "6-10 mm"), (10.0, np.inf, "10 mm and over"))


def read_nodules(path: Path) -> list[dict]:
    """The drawn nodules, excluded ones left out; a bad row is a ValueError naming its file and line."""
    nodules = []
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                nodule = {"seriesuid": row["seriesuid"], "kind": row["kind"],
                          "center_xyz": np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")]),
                          "diameter_mm": float(row["diameter_mm"])}
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}, line {line}: not a row of other_phantoms.py's nodules ({exc!r})") from None
            if nodule["kind"] != "excluded":
                nodules.append(nodule)
    return nodules


def ranks(nodules: list[dict], predictions: Predictions) -> list[tuple[int, float]]:
    """Per nodule: the rank (0 = best) and probability of its scan's best candidate inside it."""
    found = []
    for nodule in nodules:
        in_scan = np.flatnonzero(predictions.series_uids == nodule["seriesuid"])
        in_scan = in_scan[np.argsort(-predictions.probabilities[in_scan], kind="stable")]
        distance = np.linalg.norm(predictions.centers_xyz[in_scan] - nodule["center_xyz"], axis=1)
        inside = np.flatnonzero(distance < nodule["diameter_mm"] / 2)
        found.append((int(inside[0]), float(predictions.probabilities[in_scan[inside[0]]])) if len(inside)
                     else (np.iinfo(np.int32).max, 0.0))
    return found


def table(data_dir: Path, results: list[Path], top: int) -> str:
    nodules = read_nodules(data_dir / "phantom_nodules.csv")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for path in results:
        for nodule, (rank, p) in zip(nodules, ranks(nodules, read_predictions(path))):
            size = next(name for lo, hi, name in SIZES_MM if lo <= nodule["diameter_mm"] < hi)
            for group in (nodule["kind"], size):
                counts[group][0] += 1
                counts[group][1] += rank < top
                counts[group][2] += p >= 0.5
    order = sorted(k for k in counts if k not in {name for *_, name in SIZES_MM}) + [n for *_, n in SIZES_MM]
    lines = [f"| nodules | count | in their scan's top {top} | p >= 0.5 |", "|---|---|---|---|"]
    lines += [f"| {k} | {counts[k][0]} | {counts[k][1]} | {counts[k][2]} |" for k in order if k in counts]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="a data set written by tools/other_phantoms.py")
    parser.add_argument("results", type=Path, nargs="+", help="results files of luna predict on it")
    parser.add_argument("--top", type=int, default=4, help="a nodule counts as ranked high in its scan's top N")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top {args.top}: must be at least 1")
    try:
        print(table(args.data_dir, args.results, args.top))
    except (OSError, ValueError, LunaError) as exc:
        print(f"other_misses.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a model trained on `luna synth` data fails: its scores broken down by what each
candidate was placed on (nodule kind, vessel, bifurcation, rib, pleura, ...).

The synthetic data know more than the CSVs say: this script regenerates the scans of the data
set in memory (`luna.phantom.generate_scan`, same seed and size as `luna synth` used), matches
every scored candidate to its generated candidate by position, and prints, per kind:

- nodules: their count, median probability and recall at the threshold;
- negatives: their count, median probability and the ROC AUC of all nodules against that kind
  alone (1.0: never confused with a nodule).

With ``--detections`` the file is `luna detect`'s findings (which match no generated candidate):
it lists the nodules without a finding above P inside their radius, with kind, size and place.

    .venv/bin/python tools/errors_by_kind.py runs/luna/<run>/val_predictions.csv \\
        [--series 32] [--seed 0] [--size small] [--acquisition default]
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from luna.luna16.geometry import xyz2irc  # noqa: E402
from luna.synth import ACQUISITIONS, generate_scan  # noqa: E402

SMALL_NODULE_MM = 6.0  # "small" nodules are reported apart: they are the hard ones


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="a LUNA16 results file (seriesuid,coordX,coordY,coordZ,probability)")
    parser.add_argument("--series", type=int, default=32, help="--series given to luna synth")
    parser.add_argument("--seed", type=int, default=0, help="--seed given to luna synth")
    parser.add_argument("--size", default="small", help="--size given to luna synth")
    parser.add_argument("--acquisition", default="default", choices=ACQUISITIONS,
                        help="--acquisition given to luna synth")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability above which a nodule counts as found")
    parser.add_argument("--detections", action="store_true",
                        help="the file is `luna detect`'s findings, not scored candidates of the data set: a finding "
                             "is a hit when it lies inside a nodule's radius; list the nodules it misses (by "
                             "--list-below, default 0.5) instead of the table by kind of candidate")
    parser.add_argument("--list-below", type=float, default=None, metavar="P",
                        help="also list every nodule whose best candidate scores below P: kind, size, score, "
                             "false positives per scan that score higher, and slices to the scan's nearest end")
    args = parser.parse_args(argv)

    try:
        with open(args.predictions, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        sys.exit(f"{args.predictions}: cannot read the results file: {exc.strerror}")
    if not rows or not {"seriesuid", "coordX", "coordY", "coordZ", "probability"} <= set(rows[0]):
        sys.exit(f"{args.predictions}: not a LUNA16 results file "
                 "(header seriesuid,coordX,coordY,coordZ,probability and at least one row)")
    scored_uids = {row["seriesuid"] for row in rows}

    # uid -> (centres (K, 3), labels (K,), kinds (K,)) of the generated candidates.
    truth: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
    scans = {}
    for index in range(args.series):
        scan = generate_scan(seed=args.seed, index=index, size=args.size, acquisition=args.acquisition)
        if scan.uid not in scored_uids:
            continue
        nodule_xyz = np.array([n.center_xyz for n in scan.nodules]) if scan.nodules else np.zeros((0, 3))
        centers, labels, kinds = [], [], []
        for cand in scan.candidates:
            kind = cand.kind
            if cand.label == 1 and len(nodule_xyz):
                nearest = scan.nodules[int(np.linalg.norm(nodule_xyz - cand.center_xyz, axis=1).argmin())]
                kind = f"nodule:{nearest.kind}" + (":small" if nearest.diameter_mm < SMALL_NODULE_MM else "")
            centers.append(cand.center_xyz)
            labels.append(cand.label)
            kinds.append(kind)
        truth[scan.uid] = (np.array(centers), np.array(labels), kinds)
        scans[scan.uid] = scan
    missing = scored_uids - set(truth)
    if missing:
        sys.exit(f"{args.predictions}: {len(missing)} series are not in the data set for --series "
                 f"{args.series} --seed {args.seed} --size {args.size} --acquisition {args.acquisition} (e.g. {sorted(missing)[0]})")

    if args.detections:
        list_detection_misses(rows, scans, 0.5 if args.list_below is None else args.list_below)
        return
    labels, probs, kinds = [], [], []
    for row in rows:
        centers, cand_labels, cand_kinds = truth[row["seriesuid"]]
        xyz = np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])
        nearest = int(np.abs(centers - xyz).sum(axis=1).argmin())
        labels.append(cand_labels[nearest])
        probs.append(float(row["probability"]))
        kinds.append(cand_kinds[nearest])
    labels, probs = np.array(labels, dtype=bool), np.array(probs)
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, kind in enumerate(kinds):
        by_kind[kind].append(i)

    print(f"{len(rows):,} candidates, {labels.sum()} on nodules; overall ROC AUC {roc_auc_score(labels, probs):.3f}")
    print(f"{'kind':<28} {'count':>6} {'median p':>9}  {'nodules found / AUC vs nodules':>30}")
    for kind in sorted(by_kind):
        members = np.array(by_kind[kind])
        median = np.median(probs[members])
        if kind.startswith("nodule"):
            found = np.mean(probs[members] > args.threshold)
            detail = f"{found:.2f} found at p > {args.threshold:g}"
        else:
            chosen = np.concatenate([members, np.flatnonzero(labels)])
            detail = f"AUC {roc_auc_score(labels[chosen], probs[chosen]):.3f}"
        print(f"{kind:<28} {len(members):>6} {median:>9.3f}  {detail:>30}")
    if args.list_below is not None:
        list_missed(rows, scans, labels, probs, args.list_below)


def list_missed(rows: list[dict], scans: dict, labels: np.ndarray, probs: np.ndarray, below: float) -> None:
    """Print each nodule whose best-scored candidate (within its radius) is below ``below``."""
    uids = np.array([row["seriesuid"] for row in rows])
    xyz = np.array([[float(row[k]) for k in ("coordX", "coordY", "coordZ")] for row in rows])
    negatives = np.sort(probs[~labels])
    print(f"nodules scored below {below:g} (best candidate within the nodule's radius; "
          "FP/scan: negatives scoring higher, per scan)")
    for uid, scan in scans.items():
        mine = uids == uid
        for nodule in scan.nodules:
            near = mine & (np.linalg.norm(xyz - np.asarray(nodule.center_xyz), axis=1) <= nodule.diameter_mm / 2)
            best = float(probs[near].max()) if near.any() else float("nan")
            if not best < below and near.any():
                continue
            above = len(negatives) - int(np.searchsorted(negatives, best, side="right")) if near.any() else len(negatives)
            slice_ndx = xyz2irc(nodule.center_xyz, scan.origin_xyz, scan.spacing_xyz, scan.direction).index
            to_end = min(slice_ndx, scan.hu.shape[0] - 1 - slice_ndx)
            print(f"  {nodule.kind:<15} {nodule.diameter_mm:5.1f} mm  p {best:.3f}  "
                  f"{above / len(scans):7.1f} FP/scan  {to_end:3d} slices from an end  {uid}")


def list_detection_misses(rows: list[dict], scans: dict, below: float) -> None:
    """List the nodules whose best finding within their radius is below ``below`` (or absent),
    counting a finding as a false positive when it hits no nodule."""
    uids = np.array([row["seriesuid"] for row in rows])
    xyz = np.array([[float(row[k]) for k in ("coordX", "coordY", "coordZ")] for row in rows])
    probs = np.array([float(row["probability"]) for row in rows])
    labels = np.zeros(len(rows), dtype=bool)
    for uid, scan in scans.items():
        for nodule in scan.nodules:
            labels |= (uids == uid) & (np.linalg.norm(xyz - np.asarray(nodule.center_xyz), axis=1)
                                      < nodule.diameter_mm / 2)
    n_nodules = sum(len(scan.nodules) for scan in scans.values())
    print(f"{len(rows):,} findings in {len(scans)} scans, {labels.sum()} inside a nodule; {n_nodules} nodules")
    list_missed(rows, scans, labels, probs, below)


if __name__ == "__main__":
    main()

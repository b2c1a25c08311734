"""LUNA16 scoring at full size: luna.froc against a plain per-candidate loop, side by side.

A results file the size of a LUNA16 submission (888 scans, 551,065 candidates, 1,186 nodules in
601 scans; nodules found with higher probabilities than the rest) is scored twice:

- **CPM**: ``luna.eval.froc.compute_froc`` (matching by array operations per scan) against a loop in
  the style of the official evaluation script (every scored candidate tested against every
  nodule of its scan in Python). Both must give the same CPM; the benchmark stops if not.
- **Bootstrap** (1,000 resamples of the scans): ``luna.froc.bootstrap_froc``, all resamples as
  weighted cumulative sums at once, against scoring each resample from scratch as its own study
  (what the official script does). The second is timed on a few resamples and scaled to 1,000.

    .venv/bin/python benchmarks/bench_froc.py            # writes results/bench_froc.txt
    .venv/bin/python benchmarks/bench_froc.py --quick    # a tenth of the scans and candidates
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import numpy as np  # noqa: E402

from bench_report import Report  # noqa: E402
from luna.eval.froc import bootstrap_froc, compute_froc, match_candidates  # noqa: E402
from luna.luna16.rules import FP_RATES, MAX_MARKS_PER_SCAN  # noqa: E402

LUNA16 = {"scans": 888, "candidates": 551_065, "nodules": 1_186, "annotated_scans": 601}


def make_study(scale: float, seed: int = 0):
    """Candidates (uids, centres in mm, probabilities) and nodules {uid: (M, 4) x, y, z, diameter}."""
    rng = np.random.default_rng(seed)
    n_scans = max(2, round(LUNA16["scans"] * scale))
    n_candidates = round(LUNA16["candidates"] * scale)
    scans = [f"scan{s:04d}" for s in range(n_scans)]
    annotated = rng.choice(n_scans, max(1, round(LUNA16["annotated_scans"] * scale)), replace=False)
    owner = np.concatenate([annotated, rng.choice(annotated, round(LUNA16["nodules"] * scale) - len(annotated))])
    nodules: dict[str, list] = defaultdict(list)
    for s in owner:
        nodules[scans[s]].append([*rng.uniform(-150, 150, 3), rng.uniform(3, 30)])
    nodules = {uid: np.array(rows) for uid, rows in nodules.items()}

    uids = np.array(scans)[rng.integers(0, n_scans, n_candidates)]
    centers = rng.uniform(-180, 180, (n_candidates, 3))
    probs = rng.beta(1, 8, n_candidates)
    k = 0
    for uid, rows in nodules.items():  # ~90% of nodules get one to three hits, early rows overwritten
        for row in rows:
            for _ in range(int(rng.random() < 0.9) * rng.integers(1, 4)):
                uids[k], probs[k] = uid, rng.beta(6, 2)
                centers[k] = row[:3] + rng.normal(0, row[3] / 8, 3)
                k += 1
    return list(uids), centers, probs, nodules


def loop_cpm(uids, centers, probs, nodules) -> float:
    """The official script's way: per scan, its top 100 candidates, each against every nodule."""
    by_scan: dict[str, list[int]] = defaultdict(list)
    for i, uid in enumerate(uids):
        by_scan[uid].append(i)
    scans = set(nodules) | set(by_scan)
    fp_probs, found = [], {}
    for uid in scans:
        rows = sorted(by_scan.get(uid, []), key=lambda i: -probs[i])[:MAX_MARKS_PER_SCAN]  # stable: ties keep order
        for i in rows:
            hit = False
            for k, (x, y, z, diameter_mm) in enumerate(nodules.get(uid, ())):
                dx, dy, dz = centers[i][0] - x, centers[i][1] - y, centers[i][2] - z
                if (dx * dx + dy * dy + dz * dz) ** 0.5 < diameter_mm / 2:
                    hit = True
                    found[uid, k] = max(found.get((uid, k), -1.0), probs[i])
            if not hit:
                fp_probs.append(probs[i])
    n_nodules = sum(len(rows) for rows in nodules.values())
    thresholds = np.unique(np.concatenate([fp_probs, list(found.values())]))
    fp = np.searchsorted(np.sort(fp_probs), thresholds, side="left")
    fp = len(fp_probs) - fp  # false positives with probability >= each threshold
    tp = len(found) - np.searchsorted(np.sort(list(found.values())), thresholds, side="left")
    readings = []
    for rate in FP_RATES:
        ok = fp / len(scans) <= rate
        readings.append(tp[ok].max() / n_nodules if ok.any() else 0.0)
    return float(np.mean(readings))


def best_of(repeats: int, fn):
    """(smallest wall time, result) over ``repeats`` calls."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the scans and candidates")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: results/bench_froc[_quick].txt)")
    args = parser.parse_args()
    report = Report("bench_froc_quick" if args.quick else "bench_froc", args.out)
    say = report.say

    uids, centers, probs, nodules = make_study(0.1 if args.quick else 1.0)
    n_nodules = sum(len(r) for r in nodules.values())
    say(f"study: {len(set(uids) | set(nodules))} scans, {len(uids):,} candidates, {n_nodules:,} nodules "
        f"in {len(nodules)} scans")

    ours_s, ours = best_of(3, lambda: compute_froc(uids, centers, probs, nodules).cpm)
    loop_s, loop = best_of(1, lambda: loop_cpm(uids, centers, probs, nodules))
    if abs(ours - loop) > 1e-12:
        raise SystemExit(f"CPM differs: luna.froc {ours!r}, loop {loop!r}")
    say(f"\nCPM {ours:.4f} (both)")
    say(f"{'':<42} {'luna.froc s':>11} {'loop s':>9} {'ratio':>7}")
    say(f"{'CPM of the whole file':<42} {ours_s:>11.2f} {loop_s:>9.2f} {loop_s / ours_s:>6.0f}x")

    matches = match_candidates(uids, centers, probs, nodules)
    boot_s, ci = best_of(1, lambda: bootstrap_froc(matches, n_bootstraps=1000, seed=0))
    # Each resample scored from scratch: the scans drawn, a scan drawn k times renamed k times.
    scans = sorted(set(uids) | set(nodules))
    few = 5
    draws = np.random.default_rng(0).integers(0, len(scans), size=(few, len(scans)))
    rows_of = defaultdict(list)
    for i, uid in enumerate(uids):
        rows_of[uid].append(i)

    def rescore_each() -> None:
        for draw in draws:
            idx, names, ann = [], [], {}
            for copy, s in enumerate(draw):
                name = f"{scans[s]}#{copy}"
                idx += rows_of.get(scans[s], [])
                names += [name] * len(rows_of.get(scans[s], []))
                if scans[s] in nodules:
                    ann[name] = nodules[scans[s]]
            compute_froc(names, centers[idx], probs[idx], ann)

    each_s, _ = best_of(1, rescore_each)
    each_1000 = each_s / few * 1000
    say(f"{'bootstrap, 1,000 resamples':<42} {boot_s:>11.2f} {each_1000:>9.1f} {each_1000 / boot_s:>6.0f}x")
    say(f"\nCPM 95% interval {ci.cpm[0]:.4f}-{ci.cpm[1]:.4f}. The bootstrap's 'loop' column scores each "
        f"resample from scratch with luna.froc itself ({few} timed, x{1000 // few}), so that ratio is the "
        f"vectorisation alone")
    report.write()


if __name__ == "__main__":
    main()

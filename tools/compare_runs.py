"""Compare two groups of runs on the held-out sets, with the seeds' own spread as the yardstick.

A change to the recipe is trained at a few seeds and scored with `tools/heldout.py`; so is the
recipe it would replace. One run moves by its seed alone: the mean of the seven sets by about
0.011 (standard deviation), single sets by up to 0.03 (docs/results.md, "How far one run moves
by its seed"). Runs made alike (one machine, one thread each, side by side) spread by about half
as much, and the thread count alone moves a run as far as its seed: compare runs made alike.

This script reads each run's `heldout/eval_*/metrics.json` and prints, per set and for the mean
of the seven, both groups' means, their difference and the standard error of that difference,
from the runs' pooled spread within their groups; `*` marks a difference of more than two
standard errors.

    .venv/bin/python tools/compare_runs.py --baseline runs/luna/<a> runs/luna/<b> ... \\
        --candidate runs/luna/<c> runs/luna/<d> ...
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from statistics import fmean

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heldout import MEAN_OF_SEVEN, SETS, SEVEN, eval_dir, mean_of_seven  # noqa: E402


class MissingScores(Exception):
    """A run lacks a set's evaluation; the message names the file."""


def run_scores(run_dir: Path) -> dict[str, float]:
    """CPM per set that the run was scored on, plus the mean of the seven when all seven were."""
    if not run_dir.is_dir():
        raise MissingScores(f"{run_dir}: no such run directory")
    scores = {}
    for name, (folder, _flags) in SETS.items():
        path = eval_dir(run_dir / "heldout", folder) / "metrics.json"
        if path.exists():
            try:
                scores[name] = float(json.loads(path.read_text())["froc"]["cpm"])
            except (ValueError, KeyError, TypeError) as exc:
                raise MissingScores(f"{path}: no CPM in it ({exc})") from None
    if not scores:
        raise MissingScores(f"{run_dir}: no heldout/eval_*/metrics.json (run tools/heldout.py {run_dir} first)")
    if all(n in scores for n in SEVEN):
        scores[MEAN_OF_SEVEN] = mean_of_seven(scores)
    return scores


def _squares(values: list[float]) -> float:
    m = fmean(values)
    return sum((v - m) ** 2 for v in values)


def compare(baseline: list[dict[str, float]], candidate: list[dict[str, float]]) -> list[dict]:
    """One row per set every run was scored on: means, difference, its standard error (or None)."""
    order = [*SEVEN, MEAN_OF_SEVEN, *(n for n in SETS if n not in SEVEN)]
    rows = []
    for name in (n for n in order if all(n in s for s in baseline + candidate)):
        base = [s[name] for s in baseline]
        cand = [s[name] for s in candidate]
        # Pooled within-group variance: both groups are runs of one recipe each, differing by seed.
        freedom = len(base) + len(cand) - 2
        se = None
        if freedom > 0:
            pooled = (_squares(base) + _squares(cand)) / freedom
            se = math.sqrt(pooled * (1 / len(base) + 1 / len(cand)))
        rows.append({"set": name, "baseline": fmean(base), "candidate": fmean(cand),
                     "difference": fmean(cand) - fmean(base), "se": se})
    return rows


def table(rows: list[dict], n_baseline: int, n_candidate: int) -> str:
    lines = [f"| set | baseline ({n_baseline} runs) | candidate ({n_candidate} runs) | difference | standard error |",
             "|---|---|---|---|---|"]
    for r in rows:
        se = "" if r["se"] is None else f"{r['se']:.3f}"
        mark = " *" if r["se"] is not None and abs(r["difference"]) > 2 * r["se"] else ""
        lines.append(f"| {r['set']} | {r['baseline']:.3f} | {r['candidate']:.3f} | "
                     f"{r['difference']:+.3f}{mark} | {se} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, nargs="+", required=True, help="run directories of the recipe today")
    parser.add_argument("--candidate", type=Path, nargs="+", required=True, help="run directories of the change")
    args = parser.parse_args(argv)
    try:
        baseline = [run_scores(r) for r in args.baseline]
        candidate = [run_scores(r) for r in args.candidate]
    except MissingScores as exc:
        print(f"compare_runs.py: error: {exc}", file=sys.stderr)
        return 1
    rows = compare(baseline, candidate)
    if not rows:
        print("compare_runs.py: error: no held-out set was scored for every run", file=sys.stderr)
        return 1
    print(table(rows, len(baseline), len(candidate)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

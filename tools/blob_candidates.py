"""A candidates file for a classifier meant for `luna detect`: the data dir's candidates plus the blob detector's.

`luna train` learns from the candidates a data set comes with. `luna detect` shows the classifier
other ones as well: the blob detector's maxima (`luna/infer/blobs.py`), mostly vessel crossings,
airway walls and the lungs' edge, which no candidates file holds and which a classifier never
trained on can score as nodules. This writes the data dir's candidates followed by ``--max-blobs``
blobs of every scan, each labelled 1 when it lies inside an annotated nodule's radius (the LUNA16
hit rule), else 0; train on it with ``--candidates``:

    .venv/bin/python tools/blob_candidates.py data/demo data/demo/candidates_blobs.csv [--max-blobs 400] [--workers 2]
    luna prepcache --data-dir data/demo --candidates data/demo/candidates_blobs.csv
    luna train --data-dir data/demo --candidates data/demo/candidates_blobs.csv ...

Score the classification track with the data dir's own candidates (`luna predict --candidates
data/demo/candidates.csv`): the blobs are for training. What it gains and costs is in
docs/experiments.md ("Blob negatives at full size").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from luna.cli.common import configure_logging, non_negative_int  # noqa: E402
from luna.data.cache import run_jobs  # noqa: E402
from luna.errors import LunaError  # noqa: E402
from luna.infer.blobs import MAX_BLOBS, find_blobs  # noqa: E402
from luna.io.ct import Ct  # noqa: E402
from luna.io.scans import find_series_files  # noqa: E402
from luna.luna16.csvfiles import CANDIDATE_COLUMNS, format_mm, read_annotations, read_table, write_table  # noqa: E402
from luna.luna16.paths import ANNOTATION_FILE_NAMES, CANDIDATE_FILE_NAMES, find_csv  # noqa: E402
from luna.luna16.rules import findings_of, hits  # noqa: E402


def scan_blobs(job: tuple[str, Path, int]) -> tuple[str, np.ndarray]:
    """One scan's blob centres (N, 3), world xyz mm, strongest first."""
    uid, path, max_blobs = job
    blobs = find_blobs(Ct(path, uid), max_blobs)
    return uid, np.array([b.center_xyz for b in blobs], dtype=np.float64).reshape(-1, 3)


def blob_candidates(data_dir: Path, out: Path, max_blobs: int, workers: int) -> tuple[int, int]:
    """Write ``out``; return (blob rows, of them inside a nodule)."""
    if out.exists():
        raise LunaError(f"{out} exists; give a new file")
    where = "a data dir that holds it"  # the tool takes no file flags: the CSVs come with the data
    candidates_csv = find_csv(data_dir, CANDIDATE_FILE_NAMES, "candidates", where)
    nodules = read_annotations(find_csv(data_dir, ANNOTATION_FILE_NAMES, "annotations", where))
    given = read_table(candidates_csv, CANDIDATE_COLUMNS, "candidates")
    rows = [[uid, *map(format_mm, v[:3]), str(int(v[3]))] for uid, v in zip(given.uids, given.values)]
    jobs = [(uid, path, max_blobs) for uid, path in sorted(find_series_files(data_dir).items())]
    blobs = dict(run_jobs(scan_blobs, jobs, workers, "Finding blobs"))  # one scan per worker at a time
    n_blobs = n_inside = 0
    for uid, _, _ in jobs:
        centers = blobs[uid]
        inside = hits(centers, findings_of(nodules, uid)).any(axis=1) if len(centers) else np.zeros(0, bool)
        rows += [[uid, *map(format_mm, c), str(int(i))] for c, i in zip(centers, inside)]
        n_blobs, n_inside = n_blobs + len(centers), n_inside + int(inside.sum())
    write_table(out, CANDIDATE_COLUMNS, rows)
    return n_blobs, n_inside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="a LUNA16-format data dir with candidates and annotations")
    parser.add_argument("out", type=Path, help="the candidates CSV to write (must not exist)")
    parser.add_argument("--max-blobs", type=non_negative_int, default=MAX_BLOBS,
                        help="blobs a scan, as luna detect's default")
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="worker processes, each reading one scan at a time (0 = in this process)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        n_blobs, n_inside = blob_candidates(args.data_dir, args.out, args.max_blobs, args.workers)
    except (LunaError, OSError) as exc:
        print(f"blob_candidates: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: the data dir's candidates and {n_blobs} blobs ({n_inside} inside a nodule)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

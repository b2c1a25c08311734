"""``luna prepcache``: fill the crop cache before training.

Walks the scans in order; each scan is read once by one worker, which crops all of its
candidates and writes one cache entry. Memory is about one scan plus its crops per worker,
whatever the number of scans. Entries already valid are skipped, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from luna.app import add_common_args, non_negative_int, run_app
from luna.cache import CropCache
from luna.candidates import find_series_files, get_candidate_info_list
from luna.config import CropConfig
from luna.errors import DataError
from luna.progress import enumerate_with_estimate

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="luna prepcache", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LUNA_DATA_DIR", "data/luna16")),
                        help="LUNA16 root holding subset*/ and the CSVs ($LUNA_DATA_DIR)")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("LUNA_CACHE_DIR", "cache")),
                        help="crop cache root ($LUNA_CACHE_DIR)")
    parser.add_argument("--candidates", type=Path, default=None,
                        help="candidates CSV (default: candidates.csv or candidates_V2.csv in the data dir)")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="annotations CSV (default: annotations.csv in the data dir)")
    parser.add_argument("--series", nargs="+", default=None, metavar="UID",
                        help="only these series (default: every scan on disk)")
    parser.add_argument("--num-workers", type=non_negative_int, default=min(4, os.cpu_count() or 1),
                        help="worker processes, each filling one scan at a time (0 = in this process)")
    return add_common_args(parser)


def _fill_one(cache: CropCache, series_uid: str, mhd_path: Path,
              centers_xyz: list[tuple[float, float, float]]) -> tuple[str, int]:
    cache.build(series_uid, mhd_path, centers_xyz)
    return series_uid, len(centers_xyz)


def _fill_one_star(job: tuple) -> tuple[str, int]:
    return _fill_one(*job)


class LunaPrepCacheApp:
    """Fill the crop cache. ``LunaPrepCacheApp(["--data-dir", "data"]).main()``."""

    def __init__(self, argv: Sequence[str] | None = None):
        self.args = get_args_parser().parse_args(argv)

    def main(self) -> None:
        args = self.args
        log.info("Starting %s, %s", type(self).__name__, vars(args))
        series_paths = find_series_files(args.data_dir)
        candidates = get_candidate_info_list(args.data_dir, args.candidates, args.annotations)
        centers: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        for info in candidates:
            centers[info.series_uid].append(tuple(info.center_xyz))
        if args.series:
            unknown = [uid for uid in args.series if uid not in centers]
            if unknown:
                raise DataError(f"--series {unknown[0]}: no such series with candidates under {args.data_dir}")
            centers = {uid: centers[uid] for uid in args.series}

        cache = CropCache(args.cache_dir, CropConfig())
        jobs = [(cache, uid, series_paths[uid], centers[uid]) for uid in sorted(centers)
                if not cache.is_valid(uid, series_paths[uid], centers[uid])]
        n_candidates = sum(len(job[3]) for job in jobs)
        log.info("%d of %d scans already cached; filling %d scans (%d candidates) into %s",
                 len(centers) - len(jobs), len(centers), len(jobs), n_candidates, cache.root)
        start = time.monotonic()
        if args.num_workers == 0 or len(jobs) <= 1:
            results = map(_fill_one_star, jobs)
            self._drain(results, len(jobs))
        else:
            with multiprocessing.get_context().Pool(min(args.num_workers, len(jobs))) as pool:
                # chunksize 1: a worker holds one scan at a time, which bounds memory.
                self._drain(pool.imap_unordered(_fill_one_star, jobs, chunksize=1), len(jobs))
        seconds = time.monotonic() - start
        if jobs:
            log.info("Cached %d candidates of %d scans in %.1f s (%.0f candidates/s)",
                     n_candidates, len(jobs), seconds, n_candidates / max(seconds, 1e-9))

    @staticmethod
    def _drain(results, total: int) -> None:
        for _ in enumerate_with_estimate(results, "Stuffing cache", total=total):
            pass


if __name__ == "__main__":
    sys.exit(run_app(LunaPrepCacheApp, prog="luna prepcache"))

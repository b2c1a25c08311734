"""``luna prepcache``: fill the crop cache before training.

Walks the scans in order; each scan is read once by one worker, which crops all of its
candidates and writes one cache entry. Memory is about one scan plus its crops per worker,
whatever the number of scans. Entries already valid are skipped, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from luna.app import HelpFormatter, add_common_args, add_crop_args, non_negative_int, run_app
from luna.cache import CropCache, fill_cache
from luna.candidates import find_series_files, get_candidate_info_list
from luna.config import CropConfig
from luna.errors import DataError

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="luna prepcache", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
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
    add_crop_args(parser)
    parser.add_argument("--num-workers", type=non_negative_int, default=min(4, os.cpu_count() or 1),
                        help="worker processes, each filling one scan at a time (0 = in this process)")
    return add_common_args(parser)


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

        fill_cache(CropCache(args.cache_dir, CropConfig(edge=args.crop_edge, voxel_mm=args.crop_mm)), series_paths, centers, args.num_workers)


if __name__ == "__main__":
    sys.exit(run_app(LunaPrepCacheApp, prog="luna prepcache"))

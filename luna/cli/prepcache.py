"""``luna prepcache``: fill the crop cache before training.

Walks the scans in order (under torchrun, each process its share of them); each scan is read
once by one worker, which crops all of its candidates and writes one cache entry. Memory is about one scan plus its crops per worker,
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

from luna.cli.common import (add_cache_dir_arg, add_common_args, add_crop_args, add_data_dir_arg, new_parser,
                             non_negative_int, run_app)
from luna.data.cache import CropCache, fill_cache
from luna.data.candidates import get_candidate_info_list
from luna.data.crops import CropConfig
from luna.errors import DataError
from luna.io.scans import find_series_files
from luna.runtime.distributed import launched_world

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("luna prepcache", __doc__.split("\n\n")[0].split(": ", 1)[1])
    add_data_dir_arg(parser)
    add_cache_dir_arg(parser)
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

    def main(self) -> int:
        """Fill the cache; return the number of scans that had to be cropped."""
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
        cache = CropCache(args.cache_dir, CropConfig(edge=args.crop_edge, voxel_mm=args.crop_mm))
        # Under torchrun each process fills its share of the scans; no collective is needed.
        rank, world_size = launched_world()
        if world_size > 1:
            log.info("Process %d of %d: filling every %d-th scan", rank, world_size, world_size)
        return fill_cache(cache, series_paths, centers, args.num_workers, share=(rank, world_size))


if __name__ == "__main__":
    sys.exit(run_app(LunaPrepCacheApp, prog="luna prepcache"))

"""``luna bench-loader``: how fast the data loader feeds the model, by workers and batch size.

The reference chapter leaves this as an exercise: time the DataLoader with ``num_workers`` 0,
1, 2, ... and find the largest batch the machine takes. This command fills the crop cache first
(so every figure is a warm-cache figure), then times random-order batches for each (workers,
batch size) pair and prints a table. ``--find-max-batch`` doubles the batch size until one
training step of LunaModel no longer fits on the device.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from luna.cli.common import (add_cache_dir_arg, add_common_args, add_data_dir_arg, add_device_args, new_parser,
                             non_negative_int, positive_int, run_app)
from luna.data.cache import fill_cache
from luna.data.dataset import LunaDataset
from luna.errors import UsageError
from luna.runtime.device import resolve_device
from luna.train.throughput import CPU_BATCH_CAP, find_max_batch, format_max_batch, format_table, measure_loader

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("luna bench-loader", "How fast the data loader feeds the model, by workers and batch size; "
                                             "optionally the largest training batch the device takes.")
    add_data_dir_arg(parser)
    add_cache_dir_arg(parser)
    parser.add_argument("--num-workers", type=non_negative_int, nargs="+", default=[0, 1, 2],
                        help="DataLoader worker counts to time")
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[16, 32, 64],
                        help="batch sizes to time")
    parser.add_argument("--batches", type=positive_int, default=50,
                        help="batches timed per measurement, after the warm-up batches")
    parser.add_argument("--find-max-batch", action="store_true",
                        help="also double the batch size until a LunaModel training step runs out of "
                             "memory on the device, and report the largest that fits")
    parser.add_argument("--max-batch", type=positive_int, default=None,
                        help=f"largest batch --find-max-batch tries (default: {CPU_BATCH_CAP} on the CPU, "
                             "unlimited on a GPU)")
    add_device_args(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sample order")
    return add_common_args(parser)


class LunaBenchLoaderApp:
    """Time the data loader. ``LunaBenchLoaderApp(["--data-dir", "data"]).main()``."""

    def __init__(self, argv: Sequence[str] | None = None):
        self.args = get_args_parser().parse_args(argv)
        if self.args.max_batch is not None and not self.args.find_max_batch:
            raise UsageError("--max-batch only applies with --find-max-batch")

    def main(self) -> None:
        args = self.args
        log.info("Starting %s, %s", type(self).__name__, vars(args))
        device = resolve_device(args.device)
        dataset = LunaDataset(args.data_dir, val_stride=0, cache_dir=args.cache_dir)
        # Warm cache: every figure below is the steady state of training, not of the first fill.
        fill_cache(dataset.cache, dataset.series_paths, dataset.series_centers, max(args.num_workers))

        # An untimed pass first: a new process pays page faults for its first batch buffers,
        # which would otherwise land on whichever measurement comes first.
        measure_loader(dataset, max(args.batch_sizes), 0, min(args.batches, 10), device, args.seed)
        results = []
        for num_workers in args.num_workers:
            for batch_size in args.batch_sizes:
                result = measure_loader(dataset, batch_size, num_workers, args.batches, device, args.seed)
                log.info("workers %d, batch %d: %.0f samples/s", num_workers, batch_size, result.samples_per_s)
                results.append(result)
        print(format_table(results, len(dataset), device))

        if args.find_max_batch:
            largest, tried, reason = find_max_batch(device, cap=args.max_batch, precision=args.precision,
                                                    channels_last=args.channels_last)
            print(format_max_batch(largest, tried, reason, device))


if __name__ == "__main__":
    sys.exit(run_app(LunaBenchLoaderApp, prog="luna bench-loader"))

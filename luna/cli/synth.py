"""``luna synth``: write a synthetic data set in the exact LUNA16 layout.

The data let every other command run end to end without the 120 GB download::

    luna synth --out data/synth                 # 32 small scans, seed 0
    luna synth --out data/bench --size full --series 4
    luna synth --out data/dicom --size tiny --format dicom   # the same scans as DICOM series
    luna synth --out data/varied --acquisition varied        # each scan its own scanner settings
    luna synth --out data/shifted --seed 1 --acquisition shifted   # thick noisy slices, held out
    luna synth --out data/mixed --series 48 --acquisition mixed    # every third scan varied

Same seed, same bytes. The output appears all at once: it is written next to ``--out`` and
renamed into place, so a failed run leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from luna.cli.common import add_common_args, new_parser, non_negative_int, positive_int, run_app
from luna.io.writers import SCAN_FORMATS
from luna.synth import ACQUISITIONS, SIZES, check_out_dir, make_dataset

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("luna synth", "Write a synthetic data set in the exact LUNA16 layout.")
    parser.add_argument("--out", type=Path, required=True,
                        help="directory to create (subset0..subset9 and the three CSVs go inside); required")
    parser.add_argument("--series", type=positive_int, default=32, help="number of scans")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed; same seed, same files")
    parser.add_argument("--size", choices=list(SIZES), default="small",
                        help="scan size: small (~200x200x110, fast), full (512x512x250-350, like LUNA16), "
                             "tiny (64x64x40, for tests)")
    parser.add_argument("--nodules-per-scan", type=non_negative_int, nargs=2, metavar=("MIN", "MAX"),
                        default=None, help="range of nodules in a scan (default: 4 8; 1 3 for tiny)")
    parser.add_argument("--negatives-per-positive", type=non_negative_int, default=None,
                        help="negative candidates drawn per positive (default: 150; 12 for tiny)")
    parser.add_argument("--format", dest="scan_format", choices=SCAN_FORMATS, default="mhd",
                        help="how scans are stored: mhd (subset*/<uid>.mhd + .raw, like LUNA16), nifti "
                             "(<uid>.nii.gz) or dicom (a folder <uid>/ of one CT file per slice, HU through "
                             "RescaleIntercept -1024); same voxels, geometry and CSVs in each")
    parser.add_argument("--acquisition", choices=list(ACQUISITIONS), default="default",
                        help="scanner settings: default (today's scans, same files as ever), varied (each scan "
                             "draws slice spacing 0.6-3.0 mm and thickness, pixel, kernel noise x0.5-2.5, HU "
                             "offset +-30 and LUNA16-like nodule sizes) or shifted (thick 2.5-3.0 mm slices, "
                             "sharp noisy kernel, HU offset: a held-out set unlike the others), shifted-anatomy "
                             "(vessel trees and lung texture drawn unlike any other: a held-out set of other "
                             "anatomy) or mixed (every "
                             "third scan varied, the others default: training data that holds better on other "
                             "scanners); all but default also write acquisition.csv, one row a scan")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="processes generating scans in parallel (the files do not depend on it)")
    parser.add_argument("--force", action="store_true", default=False,
                        help="replace --out if it already holds a data set")
    return add_common_args(parser)


class LunaSynthApp:
    """Generate the synthetic LUNA16-format data set; ``LunaSynthApp(argv).main()``."""

    def __init__(self, argv: Sequence[str] | None = None):
        self.args = get_args_parser().parse_args(argv)

    def main(self):
        args = self.args
        # Check before spending minutes generating: a bad --out should fail at once.
        check_out_dir(args.out, args.force)
        log.info("Starting %s, %s", type(self).__name__, vars(args))
        summary = make_dataset(args.out, n_series=args.series, seed=args.seed, size=args.size,
                               nodules_per_scan=args.nodules_per_scan,
                               negatives_per_positive=args.negatives_per_positive,
                               overwrite=args.force, workers=args.workers, scan_format=args.scan_format,
                               acquisition=args.acquisition)
        log.info("Wrote %s: %d series, %d nodules (+%d excluded findings), %d positive and %d negative "
                 "candidates (%.1f negatives per positive), %.1f MB in %.1f s",
                 summary.out_dir, len(summary.series_uids), summary.n_annotations, summary.n_excluded,
                 summary.n_positive, summary.n_negative, summary.negatives_per_positive,
                 summary.bytes_written / 1e6, summary.seconds)


if __name__ == "__main__":
    sys.exit(run_app(LunaSynthApp, prog="luna synth"))

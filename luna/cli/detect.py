"""``luna detect``: from CT scans to findings with a segmentation model and a classifier.

    luna detect --segmentation SEG_RUN --classifier CLS_RUN (--data-dir D | SCAN ...) --out results.csv
        [--split val|train|all] [--pictures]

Writes ``results.csv`` (LUNA16's results format, so ``luna evaluate`` scores it as the
detection track) and, in ``results_findings/`` beside it, a JSON per scan (and a PNG per finding
with ``--pictures``). Under ``torchrun ... -m luna detect`` the scans are shared out between
the processes and one results file is written.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from luna.cli.common import (add_common_args, add_device_args, add_scoring_args, fraction, new_parser,
                             non_negative_int, positive_int, run_app)
from luna.infer.blobs import MAX_BLOBS
from luna.infer.detect import MAX_CANDIDATES, PICTURE_THRESHOLD, SPLIT_CHOICES, DetectConfig, detect
from luna.infer.grouping import THRESHOLD
from luna.report.finding_pictures import draw_findings

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("luna detect", "Find nodules in CT scans: the segmentation model marks voxels, marked voxels "
                                       "are grouped into candidates, the classifier scores each; writes a LUNA16 "
                                       "results file (seriesuid,coordX,coordY,coordZ,probability) and a JSON per scan.")
    parser.add_argument("scans", nargs="*", type=Path, metavar="SCAN",
                        help="scans to detect in, instead of --data-dir: .mhd, .mha, .nii, .nii.gz or .nrrd "
                             "files, or DICOM series folders")
    parser.add_argument("--series-uid", default=None, metavar="UID",
                        help="the series to read where a SCAN folder holds several DICOM series")
    parser.add_argument("--segmentation", type=Path, required=True, metavar="RUN",
                        help="a luna train-seg run directory (its best.pt) or checkpoint; required")
    parser.add_argument("--classifier", type=Path, required=True, metavar="RUN",
                        help="a luna train run directory (its best.pt) or checkpoint; required")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="a folder of scans (subset*/<uid>.mhd, any depth) to detect in (default without "
                             "SCAN files: $LUNA_DATA_DIR or data/luna16)")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default=None,
                        help="val: the scans the classifier's run held out (needs its candidates CSV); train: the "
                             "others; all: every scan (default: val on the classifier's own data dir, else all)")
    parser.add_argument("--out", type=Path, required=True,
                        help="results CSV; the per-scan JSON (and pictures) go in <name>_findings/ beside it; required")
    parser.add_argument("--pictures", action="store_true",
                        help=f"also a PNG of each finding scored above {PICTURE_THRESHOLD:g}: axial, coronal and "
                             "sagittal slices through it, the finding circled")
    parser.add_argument("--max-candidates", type=positive_int, default=MAX_CANDIDATES,
                        help="findings per scan at most: the most probable after the views and the suppression")
    parser.add_argument("--max-blobs", type=non_negative_int, default=MAX_BLOBS,
                        help="blob-shaped candidates per scan added to the segmentation's, the strongest (a "
                             "multi-scale Laplacian-of-Gaussian detector: small and faint nodules); 0 = the "
                             "segmentation's only")
    parser.add_argument("--threshold", type=fraction, default=THRESHOLD,
                        help="segmentation probability above which a voxel is marked")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="classifier crops per forward pass")
    add_scoring_args(parser)
    add_device_args(parser)
    return add_common_args(parser)


class LunaDetectApp:
    """Detect. ``LunaDetectApp(["--segmentation", S, "--classifier", C, "--data-dir", D, "--out", O]).main()``."""

    def __init__(self, argv: Sequence[str] | None = None):
        args = vars(get_args_parser().parse_args(argv))
        args.pop("debug", None)
        args["scans"] = args["scans"] or None
        self.config = DetectConfig(**args)

    def main(self) -> Path:
        """Detect in the scans; return the results file."""
        log.info("Starting %s, %s", type(self).__name__, self.config)
        return detect(self.config, draw_findings)


if __name__ == "__main__":
    sys.exit(run_app(LunaDetectApp, prog="luna detect"))

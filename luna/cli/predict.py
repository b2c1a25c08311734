"""``luna predict``: score candidates with a trained model and write a LUNA16 results file."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from luna.cli.common import add_common_args, add_device_args, add_scoring_args, new_parser, positive_int, run_app
from luna.infer.predict import SPLIT_CHOICES, PredictConfig, predict

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("luna predict", "Score candidates with a trained model and write a LUNA16 results file "
                                        "(seriesuid,coordX,coordY,coordZ,probability).")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a checkpoint file, a training run directory (its best.pt, which luna train makes the "
                             "final weights unless told otherwise by --best-metric), or a model luna export wrote "
                             "(.onnx, needs onnxruntime; or TorchScript) with its card beside it; required")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="LUNA16-layout root holding subset*/ and the CSVs; scans may be .mhd, .nii(.gz), "
                             ".nrrd, .mha or DICOM series folders (default: the training run's --data-dir, "
                             "else $LUNA_DATA_DIR or data/luna16)")
    parser.add_argument("--candidates", type=Path, default=None,
                        help="candidates CSV (default: candidates.csv or candidates_V2.csv in the data dir)")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="annotations CSV, used to order candidates as training did (default: "
                             "annotations.csv in the data dir; needed only to redo a candidate-level split)")
    parser.add_argument("--series", nargs="+", default=None, metavar="UID",
                        help="only these series (default: every scan of the split)")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default=None,
                        help="val: the scans the training run held out (same val_stride and split as "
                             "the checkpoint's run; a luna crossval fold's run: its fold's scans); train: the "
                             "others; all: every scan on disk "
                             "(default: val on the training run's own data dir, else all; all with --series)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results CSV (default: predictions_<split>.csv beside the checkpoint)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="crops per forward pass")
    add_scoring_args(parser)
    add_device_args(parser)
    parser.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=True,
                        help="read the next scan in a background thread while this one is scored")
    return add_common_args(parser)


class LunaPredictApp:
    """Score candidates. ``LunaPredictApp(["--checkpoint", "runs/luna/<run>"]).main()``."""

    def __init__(self, argv: Sequence[str] | None = None):
        args = vars(get_args_parser().parse_args(argv))
        args.pop("debug", None)
        self.config = PredictConfig(**args)

    def main(self) -> Path:
        """Score the selected candidates; return the path of the results file."""
        log.info("Starting %s, %s", type(self).__name__, self.config)
        return predict(self.config)


if __name__ == "__main__":
    sys.exit(run_app(LunaPredictApp, prog="luna predict"))

"""``luna crossval``: LUNA16's cross-validation by subset, from training to one pooled FROC/CPM.

    luna crossval --data-dir D --folds 10 --out-dir DIR [any luna train flag]

Fold k holds out the scans of its subsets (subset s goes to fold s mod --folds), trains on the
others with the training flags given, and scores its held-out scans; the folds' results files
are then pooled (see :mod:`luna.train.crossval`).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from luna.cli.common import add_common_args, new_parser, non_negative_float, non_negative_int, positive_int, run_app
from luna.cli.train import add_training_args
from luna.eval.evaluation import format_table
from luna.eval.suppression import NMS_RADIUS_MM
from luna.luna16.candidates import LUNA16_SUBSETS
from luna.models.views import VIEW_COUNTS
from luna.train.config import TrainConfig
from luna.train.crossval import CrossvalConfig, Pooled, format_fold_table, run_crossval

log = logging.getLogger(__name__)

CROSSVAL_KEYS = ("out_dir", "folds", "fold", "pool_only", "tta_views", "nms_mm", "bootstraps")


def at_least_two(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"cross-validation needs at least 2 folds, got {text}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "luna crossval", "Cross-validation by subset, LUNA16's protocol: fold k holds out the scans of the subsets "
        "assigned to it (subset s goes to fold s mod --folds), trains on the other folds' scans and scores its "
        "held-out scans; the folds' results are pooled into one FROC/CPM with a bootstrap interval, a per-fold table "
        "and plots (OUT_DIR/metrics.json). Finished folds are skipped when the command is repeated. Takes every "
        "luna train flag; each fold's run validates on every --val-stride-th of its training scans.")
    folds = parser.add_argument_group("cross-validation")
    folds.add_argument("--out-dir", type=Path, required=True,
                       help="where the folds' runs and results and the pooled metrics go; required")
    folds.add_argument("--folds", type=at_least_two, default=None,
                       help=f"number of folds (default: that of an existing --out-dir, else {LUNA16_SUBSETS}: "
                            "one subset per fold)")
    folds.add_argument("--fold", type=non_negative_int, default=None, metavar="K",
                       help="run fold K only (e.g. one fold per machine, or per torchrun launch); the last fold to "
                            "finish pools them all")
    folds.add_argument("--pool-only", action="store_true",
                       help="train nothing: pool the finished folds, naming those that are missing")
    folds.add_argument("--tta-views", type=int, choices=VIEW_COUNTS, default=8,
                       help="test-time views when scoring the held-out scans (as luna predict)")
    folds.add_argument("--nms-mm", type=non_negative_float, default=NMS_RADIUS_MM,
                       help="suppression radius when scoring the held-out scans (as luna predict); 0 = off")
    folds.add_argument("--bootstraps", type=non_negative_int, default=1000,
                       help="bootstrap resamples of the pooled scans for the 95%% intervals (0: none)")
    add_training_args(parser, own_run_dir=False)
    return add_common_args(parser)


class LunaCrossvalApp:
    """Cross-validate. ``LunaCrossvalApp(["--data-dir", "data/synth", "--out-dir", "xval"]).main()``."""

    def __init__(self, argv: Sequence[str] | None = None):
        args = vars(get_args_parser().parse_args(argv))
        args.pop("debug", None)
        own = {key: args.pop(key) for key in CROSSVAL_KEYS}
        self.config = CrossvalConfig(train=TrainConfig(**args), **own)

    def main(self) -> Pooled | None:
        """Run the folds and pool them; return the pooled evaluation (None while folds are missing)."""
        pooled = run_crossval(self.config)
        if pooled is not None:
            print(f"Cross-validation in {self.config.out_dir}: {len(pooled.pooled_folds)} of "
                  f"{len(pooled.pooled_folds) + len(pooled.missing_folds)} folds pooled\n")
            print(format_fold_table(pooled))
            print("\nPooled\n")
            print(format_table(pooled.evaluation))
            print(f"\nwrote {pooled.metrics_path} and {', '.join(path.name for path in pooled.figures)}")
        return pooled


if __name__ == "__main__":
    sys.exit(run_app(LunaCrossvalApp, prog="luna crossval"))

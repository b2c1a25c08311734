"""``luna train-seg``: train the segmentation model (the detector's first stage) from the annotations.

``LunaTrainSegApp(argv).main()`` runs from a shell, from Python or from a notebook
(``luna.run("train-seg", "--epochs=1")``); under ``torchrun ... -m luna train-seg`` the same code
trains in every process (see :mod:`luna.train.seg_trainer`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from luna.cli.common import (add_cache_dir_arg, add_common_args, add_data_dir_arg, add_device_args, explicit_args,
                             fraction, new_parser, non_negative_float, non_negative_int, positive_float, positive_int,
                             run_app)
from luna.data.masks import MASK_RULES
from luna.luna16.paths import DEFAULT_RUNS_DIR, DEFAULT_SEG_TB_PREFIX
from luna.train.seg_config import SegTrainConfig, resumed_config
from luna.train.seg_engine import SEG_LOSSES
from luna.train.seg_trainer import SegTrainer, saved_run_args

DEFAULTS = SegTrainConfig()


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("luna train-seg", "Train the segmentation model that finds candidates in a scan (a 2D U-Net "
                                          "over axial slices), from the annotations alone; metrics every epoch, "
                                          "checkpoints in runs/<tb-prefix>/.")
    data = parser.add_argument_group("data")
    add_data_dir_arg(data)
    add_cache_dir_arg(data, "; the scans on the segmentation grid are cached there, filled first if incomplete")
    data.add_argument("--annotations", type=Path, default=None, help="annotations CSV (default: found in the data dir)")
    data.add_argument("--val-stride", type=positive_int, default=DEFAULTS.val_stride,
                      help="every n-th scan is held out for validation (the classifier's split: train both with "
                           "the same stride to hold out the same scans)")
    data.add_argument("--pixel-mm", type=non_negative_float, default=DEFAULTS.pixel_mm,
                      help="pixel size of the grid scans are resampled to; 0 keeps each scan's own (the reference)")
    data.add_argument("--slice-mm", type=non_negative_float, default=DEFAULTS.slice_mm,
                      help="slice distance of that grid; 0 keeps each scan's own (the reference)")
    data.add_argument("--mask", choices=MASK_RULES, default=DEFAULTS.mask,
                      help="training masks from the annotations: sphere (the dense voxels within the annotated "
                           "radius) or box (the reference's walk along each axis, which runs along vessels)")
    data.add_argument("--num-workers", type=non_negative_int, default=DEFAULTS.num_workers,
                      help="data loader worker processes (also used to fill the cache)")
    data.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size,
                      help="crops per batch and process")

    run = parser.add_argument_group("run")
    run.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help="epochs to train (in total, when resuming)")
    run.add_argument("--epoch-size", type=positive_int, default=DEFAULTS.epoch_size, help="training crops per epoch")
    run.add_argument("--tb-prefix", default=DEFAULT_SEG_TB_PREFIX, help="runs/<tb-prefix>/ groups runs for TensorBoard")
    run.add_argument("--runs-dir", type=Path, default=Path(DEFAULT_RUNS_DIR),
                     help="root of TensorBoard runs and run directories")
    run.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                     help="continue the run in RUN_DIR from its last.pt, with its own arguments (only --epochs, "
                          "--num-workers and the speed flags may change)")
    run.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of sampling, augmentation and initialisation")
    run.add_argument("comment", nargs="?", default=DEFAULTS.comment, help="comment suffix for the run names")

    model = parser.add_argument_group("optimiser, sampling and augmentation")
    model.add_argument("--lr", type=positive_float, default=DEFAULTS.lr,
                       help="peak learning rate of Adam (cosine decay to 0 over the run)")
    model.add_argument("--loss", choices=SEG_LOSSES, default=DEFAULTS.loss,
                       help="dice: the reference's Dice of the output + 8 x Dice on the true mask; bce_dice: that plus "
                            "a per-voxel cross-entropy with nodule voxels weighed 8 x (trains out of marking "
                            "everything much sooner)")
    model.add_argument("--random-crops", type=fraction, default=DEFAULTS.random_crops, metavar="FRACTION",
                       help="share of training crops taken at random in the lungs rather than around a nodule; "
                            "0 = the reference (only slices that hold a nodule)")
    model.add_argument("--augment", action=argparse.BooleanOptionalAction, default=DEFAULTS.augment,
                       help="flip and turn training crops at random and add noise (never validation)")
    model.add_argument("--augment-noise", type=non_negative_float, default=DEFAULTS.augment_noise,
                       help="Gaussian noise std, HU")

    speed = parser.add_argument_group("speed")
    add_device_args(speed)
    return add_common_args(parser)


class LunaTrainSegApp:
    """Train the segmentation model. ``LunaTrainSegApp(["--data-dir", "data/synth"]).main()``."""

    def __init__(self, argv: Sequence[str] | None = None):
        parser = get_args_parser()
        args = vars(parser.parse_args(argv))
        args.pop("debug", None)
        self.resume = args["resume"]
        self.given = {name: args[name] for name in explicit_args(parser, argv) if name in args}
        self.config = None if self.resume else SegTrainConfig(**args)

    def main(self) -> Path:
        """Train; return the run directory."""
        config = self.config or resumed_config(saved_run_args(self.resume), self.given)
        return SegTrainer(config, type(self).__name__).fit()


if __name__ == "__main__":
    sys.exit(run_app(LunaTrainSegApp, prog="luna train-seg"))

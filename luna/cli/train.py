"""``luna train``: train the nodule classifier on the candidates of a LUNA16-format data set.

``LunaTrainingApp(argv).main()`` runs from a shell, from Python or from a notebook
(``luna.run("train", "--epochs=1")``); under ``torchrun ... -m luna train`` the same code trains
in every process (see :mod:`luna.train.trainer`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from luna.cli.common import (add_cache_dir_arg, add_common_args, add_crop_args, add_data_dir_arg, add_device_args,
                             fraction, new_parser, non_negative_float, non_negative_int, positive_float,
                             positive_int, run_app)
from luna.luna16.candidates import SPLITS
from luna.luna16.paths import DEFAULT_RUNS_DIR, DEFAULT_TB_PREFIX
from luna.models.classifier import CLASSIFIERS
from luna.train.augment import AugmentConfig
from luna.train.config import BEST_METRICS, TrainConfig
from luna.train.recipe import LR_SCHEDULES, OPTIMIZERS
from luna.train.resume import resumed_config
from luna.train.trainer import ClassifierTrainer


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("luna train", "Train the nodule classifier on the candidates of a LUNA16-format "
                                      "data set; metrics every epoch, checkpoints in runs/<tb-prefix>/.")
    add_training_args(parser)
    return add_common_args(parser)


def add_training_args(parser: argparse.ArgumentParser, own_run_dir: bool = True) -> None:
    """Every flag of a training run (the fields of TrainConfig). ``own_run_dir=False`` leaves out
    where the run goes and ``--resume``, for a command that places and resumes runs itself."""
    data = parser.add_argument_group("data")
    add_data_dir_arg(data)
    add_cache_dir_arg(data, "; filled first if incomplete")
    data.add_argument("--candidates", type=Path, default=None, help="candidates CSV (default: found in the data dir)")
    data.add_argument("--annotations", type=Path, default=None, help="annotations CSV (default: found in the data dir)")
    data.add_argument("--excluded", type=Path, default=None,
                      help="annotations_excluded.csv, for the validation CPM and --skip-excluded (default: found "
                           "in the data dir, if any)")
    data.add_argument("--skip-excluded", action=argparse.BooleanOptionalAction, default=True,
                      help="leave training candidates inside an excluded finding (neither a hit nor a false "
                           "positive when scored) out of the negatives")
    data.add_argument("--val-stride", type=positive_int, default=10,
                      help="every n-th scan (or candidate) is held out for validation")
    data.add_argument("--split", choices=SPLITS, default="scan",
                      help="hold out whole scans, or every n-th candidate as the reference did (leaks scans)")
    add_crop_args(data)
    data.add_argument("--num-workers", type=non_negative_int, default=2,
                      help="data loader worker processes (also used to fill the cache)")
    data.add_argument("--batch-size", type=positive_int, default=32, help="samples per batch and process")

    run = parser.add_argument_group("run")
    run.add_argument("--epochs", type=positive_int, default=1,
                     help="epochs to train (in total; with --resume, the run's own unless given)")
    if own_run_dir:
        run.add_argument("--tb-prefix", default=DEFAULT_TB_PREFIX,
                         help="runs/<tb-prefix>/ groups runs for TensorBoard")
        run.add_argument("--runs-dir", type=Path, default=Path(DEFAULT_RUNS_DIR),
                         help="root of TensorBoard runs and run directories")
    run.add_argument("--tb-single-writer", action="store_true",
                     help="one TensorBoard run with trn/ and val/ in the tag names, instead of two runs")
    if own_run_dir:
        run.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                         help="continue the run in RUN_DIR from its last.pt, with its own flags; only --epochs, "
                              "--lr, --data-dir, --cache-dir, --num-workers and the speed flags may change")
    run.add_argument("--best-metric", default="epoch", choices=BEST_METRICS,
                     help="what picks best.pt. epoch: the latest epoch, i.e. the final weights, where the cosine "
                          "schedule has annealed to (on new scans they scored as well as or better than an epoch "
                          "picked by validation, see docs/experiments.md); or a validation metric (loss/all: "
                          "lower is better)")
    run.add_argument("--seed", type=int, default=0, help="seed of sampling, augmentation and initialisation")
    run.add_argument("comment", nargs="?", default="luna", help="comment suffix for the run names")

    model = parser.add_argument_group("model and optimiser")
    model.add_argument("--model", choices=sorted(CLASSIFIERS), default=TrainConfig.model,
                       help="architecture: luna (the reference), luna_bn (batch norm after each conv of blocks 2-4), "
                            "luna_centre (luna_bn plus a wider branch on the crop's centre at full resolution) or "
                            "luna_twoscale (luna_centre with its trunk on the crop at half resolution: ~3x faster)")
    model.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="optimiser")
    model.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate")
    model.add_argument("--momentum", type=float, default=0.99, help="SGD momentum (the reference's 0.99)")
    model.add_argument("--weight-decay", type=non_negative_float, default=1e-4,
                       help="weight decay (decoupled for adamw)")
    model.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine",
                       help="constant, or linear warm-up then cosine decay to 0 over the run")
    model.add_argument("--warmup-steps", type=non_negative_int, default=100,
                       help="batches of linear warm-up (cosine schedule)")
    model.add_argument("--threshold", type=fraction, default=0.5,
                       help="probability above which a sample is a nodule")

    sampling = parser.add_argument_group("sampling and augmentation")
    sampling.add_argument("--balanced", type=non_negative_int, default=1, metavar="RATIO",
                          help="negatives per positive in training batches; 0 = natural order (the reference)")
    sampling.add_argument("--epoch-size", type=positive_int, default=None,
                          help="training samples per epoch (default: the training split's size)")
    sampling.add_argument("--hard-negatives", type=fraction, default=0.5, metavar="FRACTION",
                          help="from epoch 2, draw this fraction of negatives in proportion to their last "
                               "training loss (hard-negative mining; needs --balanced); 0 = off")
    sampling.add_argument("--augment", dest="augmented", action=argparse.BooleanOptionalAction, default=True,
                          help="augment training batches on the device (never validation)")
    sampling.add_argument("--augment-flip", action=argparse.BooleanOptionalAction, default=True,
                          help="random flips of each axis")
    sampling.add_argument("--augment-offset", type=float, default=AugmentConfig.offset,
                          help="largest shift, fraction of the crop (the reference: 0.1, which makes positives "
                               "look like the negatives just beside a nodule)")
    sampling.add_argument("--augment-scale", type=float, default=AugmentConfig.scale,
                          help="largest scale change, fraction")
    sampling.add_argument("--augment-rotate", action=argparse.BooleanOptionalAction, default=True,
                          help="random rotation about the head-foot axis")
    sampling.add_argument("--augment-noise", type=float, default=AugmentConfig.noise, help="Gaussian noise std, HU")
    sampling.add_argument("--augment-contrast", type=float, default=AugmentConfig.contrast,
                          help="largest loss of contrast towards air, fraction, for half of the samples "
                               "(faint nodules from solid ones); 0 = off (the reference)")

    speed = parser.add_argument_group("speed")
    add_device_args(speed)
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")


def typed_args(argv: Sequence[str] | None) -> dict:
    """Only the flags given in ``argv`` (no defaults): what a resume takes over the run's own."""
    parser = get_args_parser()
    for action in parser._actions:  # argparse has no public way to drop every default
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


class LunaTrainingApp:
    """Train the classifier. ``LunaTrainingApp(["--data-dir", "data/synth"]).main()``.

    With ``--resume RUN`` the run's own flags (from its last.pt) are the defaults; the flags given
    may change only what :mod:`luna.train.resume` allows.
    """

    def __init__(self, argv: Sequence[str] | None = None):
        args = vars(get_args_parser().parse_args(argv))
        args.pop("debug", None)
        if args["resume"] is not None:
            changes = typed_args(argv)
            changes.pop("debug", None)
            self.config = resumed_config(args["resume"], changes)
        else:
            self.config = TrainConfig(**args)

    def main(self) -> Path:
        """Train; return the run directory."""
        return ClassifierTrainer(self.config, type(self).__name__).fit()


if __name__ == "__main__":
    sys.exit(run_app(LunaTrainingApp, prog="luna train"))

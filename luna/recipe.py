"""The training recipe: optimiser, learning-rate schedule, sampling, augmentation and the
speed settings (precision, memory format), as flags with the defaults that make a model that
finds nodules. The reference's setup stays one set of flags away (see the README)."""
from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from luna.app import non_negative_int, positive_float, positive_int
from luna.augment import AugmentConfig
from luna.errors import UsageError
from luna.model import MODELS

log = logging.getLogger(__name__)


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model and optimiser")
    model.add_argument("--model", choices=sorted(MODELS), default="luna_centre",
                       help="architecture: luna (the reference), luna_bn (batch norm after each conv of blocks 2-4) "
                            "or luna_centre (luna_bn plus a wider branch on the crop's centre at full resolution)")
    model.add_argument("--block-channels", type=block_channels, default=None, metavar="C1,C2,C3,C4",
                       help="channels of the four blocks (default: 8,16,32,64, the reference's doubling)")
    model.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default="adamw", help="optimiser")
    model.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate")
    model.add_argument("--momentum", type=float, default=0.99, help="SGD momentum (the reference's 0.99)")
    model.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (decoupled for adamw)")
    model.add_argument("--lr-schedule", choices=("constant", "cosine"), default="cosine",
                       help="constant, or linear warm-up then cosine decay to 0 over the run")
    model.add_argument("--warmup-steps", type=non_negative_int, default=100,
                       help="batches of linear warm-up (cosine schedule)")
    model.add_argument("--threshold", type=float, default=0.5, help="probability above which a sample is a nodule")

    sampling = parser.add_argument_group("sampling and augmentation")
    sampling.add_argument("--balanced", type=non_negative_int, default=1, metavar="RATIO",
                          help="negatives per positive in training batches; 0 = natural order (the reference)")
    sampling.add_argument("--epoch-size", type=positive_int, default=None,
                          help="training samples per epoch (default: the training split's size)")
    sampling.add_argument("--hard-negatives", type=float, default=0.5, metavar="FRACTION",
                          help="from epoch 2, draw this fraction of negatives in proportion to their last "
                               "training loss (hard-negative mining; needs --balanced); 0 = off")
    sampling.add_argument("--augmented", "--augment", dest="augmented", action=argparse.BooleanOptionalAction,
                          default=True, help="augment training batches on the device (never validation)")
    sampling.add_argument("--augment-flip", action=argparse.BooleanOptionalAction, default=True,
                          help="random flips of each axis")
    sampling.add_argument("--augment-offset", type=float, default=AugmentConfig.offset,
                          help="largest shift, fraction of the crop (the reference: 0.1, which makes positives "
                               "look like the negatives just beside a nodule)")
    sampling.add_argument("--augment-scale", type=float, default=0.2, help="largest scale change, fraction")
    sampling.add_argument("--augment-rotate", action=argparse.BooleanOptionalAction, default=True,
                          help="random rotation about the head-foot axis")
    sampling.add_argument("--augment-noise", type=float, default=25.0, help="Gaussian noise std, HU")
    sampling.add_argument("--augment-contrast", type=float, default=AugmentConfig.contrast,
                          help="largest loss of contrast towards air, fraction, for half of the samples "
                               "(faint nodules from solid ones); 0 = off (the reference)")

    speed = parser.add_argument_group("speed")
    speed.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                       help="autocast dtype; auto: bf16 where the device supports it, else fp32")
    speed.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                       help="channels_last_3d memory format; auto: on")
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")


def block_channels(text: str) -> list[int]:
    """argparse type: four comma-separated channel counts, each >= 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be four channel counts >= 1 like 8,16,32,64, got {text!r}")
    return values


def model_config(args: argparse.Namespace) -> dict:
    """The :func:`luna.model.build_model` config of the flags."""
    config: dict = {"name": args.model}
    if getattr(args, "block_channels", None):
        config["block_channels"] = list(args.block_channels)
    return config


def augment_config(args: argparse.Namespace) -> AugmentConfig | None:
    """The augmentation of the flags, or None when off."""
    if not args.augmented:
        return None
    config = AugmentConfig(flip=args.augment_flip, offset=args.augment_offset, scale=args.augment_scale,
                           rotate=args.augment_rotate, noise=args.augment_noise,
                           contrast=args.augment_contrast)
    return config if config.enabled else None


@dataclass
class Performance:
    precision: str
    channels_last: bool
    compile: bool


def resolve_performance(args: argparse.Namespace, device: torch.device) -> Performance:
    """Turn ``auto`` speed flags into choices for this device."""
    precision = args.precision
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu":
            precision = "bf16"  # oneDNN bf16 convolutions: ~3.5x fp32 on AVX-512 CPUs (see benchmarks/)
        else:
            precision = "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    channels_last = args.channels_last != "off" and device.type in ("cpu", "cuda")
    return Performance(precision, channels_last, args.compile)


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    params = model.parameters()
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace, total_steps: int):
    """Per-batch schedule, or None for a constant learning rate."""
    if args.lr_schedule == "constant":
        return None
    warmup = min(args.warmup_steps, max(total_steps // 10, 1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class HardNegativeMiner:
    """Remembers each training negative's latest loss and turns it into sampling weights.

    Weights mix uniform sampling (1 - fraction) with sampling in proportion to the loss
    (fraction); negatives never seen yet count with the largest loss seen, so they get drawn.

    Args:
        n_candidates: size of the dataset's candidate list.
        neg_ndx: positions of the negatives in that list.
        fraction: share of the loss-proportional part, in [0, 1].
    """

    def __init__(self, n_candidates: int, neg_ndx: np.ndarray, fraction: float):
        if not 0.0 <= fraction <= 1.0:
            raise UsageError(f"--hard-negatives must be in [0, 1], got {fraction}")
        self.fraction = fraction
        self.position = np.full(n_candidates, -1, dtype=np.int64)
        self.position[neg_ndx] = np.arange(len(neg_ndx))
        self.loss = np.full(len(neg_ndx), np.nan)

    def update(self, cand_ndx: np.ndarray, losses: np.ndarray) -> None:
        pos = self.position[cand_ndx]
        keep = pos >= 0
        self.loss[pos[keep]] = losses[keep]

    def weights(self) -> np.ndarray | None:
        if self.fraction == 0 or np.isnan(self.loss).all():
            return None
        loss = np.nan_to_num(self.loss, nan=np.nanmax(self.loss))
        loss = np.clip(loss, 1e-6, None)
        return (1 - self.fraction) / len(loss) + self.fraction * loss / loss.sum()

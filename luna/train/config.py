"""Everything a classifier training run is told, as one dataclass: what ``luna train``'s flags set.

The field names are the flags' names (``--val-stride`` -> ``val_stride``), so a checkpoint's
``args`` dict, the report's argument table and a resumed run all speak the same names. The
defaults are today's recipe (docs/results.md); the reference's setup is in the README.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luna.data.crops import CROP_EDGE, CROP_VOXEL_MM, CropConfig
from luna.luna16.paths import DEFAULT_RUNS_DIR, DEFAULT_TB_PREFIX, default_cache_dir, default_data_dir
from luna.train.augment import AugmentConfig

BEST_METRICS = ("epoch", "auc/roc", "froc/cpm", "auc/pr", "pr/f1_score", "loss/all")


@dataclass
class TrainConfig:
    """The settings of one training run (see ``luna train --help`` for each)."""

    # data
    data_dir: Path = field(default_factory=default_data_dir)
    cache_dir: Path = field(default_factory=default_cache_dir)
    candidates: Path | None = None
    annotations: Path | None = None
    excluded: Path | None = None
    skip_excluded: bool = True
    val_stride: int = 10
    split: str = "scan"
    # Scans the run never trains or validates on: a cross-validation fold's test scans (set by
    # luna crossval, recorded in the checkpoint so that `luna predict --split val` scores them).
    # Hundreds of uids on LUNA16: kept out of the repr that the start of a run logs.
    holdout_series: list[str] | None = field(default=None, repr=False)
    crop_mm: float = CROP_VOXEL_MM
    crop_edge: str = CROP_EDGE
    num_workers: int = 2
    batch_size: int = 32
    # run
    epochs: int = 1
    tb_prefix: str = DEFAULT_TB_PREFIX
    runs_dir: Path = Path(DEFAULT_RUNS_DIR)
    tb_single_writer: bool = False
    resume: Path | None = None
    best_metric: str = "epoch"
    seed: int = 0
    device: str = "auto"
    comment: str = "luna"
    # model and optimiser
    model: str = "luna_twoscale"
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: float = 0.99
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 100
    threshold: float = 0.5
    # sampling and augmentation
    balanced: int = 1
    epoch_size: int | None = None
    hard_negatives: float = 0.5
    augmented: bool = True
    augment_flip: bool = True
    augment_offset: float = AugmentConfig.offset
    augment_scale: float = AugmentConfig.scale
    augment_rotate: bool = True
    augment_noise: float = AugmentConfig.noise
    augment_contrast: float = AugmentConfig.contrast
    # speed
    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """A config from a dict such as a checkpoint's ``args``; unknown keys are ignored and
        path-valued fields become Paths."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, value in values.items():
            if name not in known:
                continue
            if value is not None and name in ("data_dir", "cache_dir", "candidates", "annotations", "excluded",
                                              "runs_dir", "resume"):
                value = Path(value)
            kwargs[name] = value
        return cls(**kwargs)

    def crop(self) -> CropConfig:
        return CropConfig(edge=self.crop_edge, voxel_mm=self.crop_mm)

    def model_config(self) -> dict:
        """The :func:`luna.models.registry.build_model` config."""
        return {"name": self.model}

    def augment(self) -> AugmentConfig | None:
        """The training augmentation, or None when off."""
        if not self.augmented:
            return None
        config = AugmentConfig(flip=self.augment_flip, offset=self.augment_offset, scale=self.augment_scale,
                               rotate=self.augment_rotate, noise=self.augment_noise, contrast=self.augment_contrast)
        return config if config.enabled else None

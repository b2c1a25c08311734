"""Everything a segmentation training run is told, as one dataclass: what ``luna train-seg``'s
flags set, and how ``--resume`` rebuilds it from the run it continues.

The defaults train a model that finds the built-in data's nodules within about ten minutes on
two CPU cores (docs/results.md, "Detection").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luna.data.masks import MASK_RULES
from luna.data.seg_dataset import SegSampling
from luna.data.seg_grid import GRID_PIXEL_MM, GRID_SLICE_MM, SegGrid
from luna.errors import UsageError
from luna.luna16.paths import DEFAULT_RUNS_DIR, DEFAULT_SEG_TB_PREFIX, default_cache_dir, default_data_dir
from luna.train.seg_engine import SEG_LOSSES

_PATH_FIELDS = ("data_dir", "cache_dir", "annotations", "runs_dir", "resume")
# What a resumed run may change: how and where it runs, and how long. Everything else (the
# data, the split, the model, the sampling) must be the run's own.
RESUME_MAY_CHANGE = frozenset({"epochs", "num_workers", "device", "precision", "channels_last", "resume"})


@dataclass
class SegTrainConfig:
    """The settings of one segmentation training run (see ``luna train-seg --help`` for each)."""

    # data
    data_dir: Path = field(default_factory=default_data_dir)
    cache_dir: Path = field(default_factory=default_cache_dir)
    annotations: Path | None = None
    val_stride: int = 10
    pixel_mm: float = GRID_PIXEL_MM
    slice_mm: float = GRID_SLICE_MM
    mask: str = "sphere"
    num_workers: int = 2
    batch_size: int = 16
    # run
    epochs: int = 4
    epoch_size: int = 3000
    tb_prefix: str = DEFAULT_SEG_TB_PREFIX
    runs_dir: Path = Path(DEFAULT_RUNS_DIR)
    resume: Path | None = None
    seed: int = 0
    device: str = "auto"
    comment: str = "seg"
    # model, optimiser, sampling
    lr: float = 2e-3
    loss: str = "bce_dice"
    random_crops: float = SegSampling.random_share
    augment: bool = True
    augment_noise: float = SegSampling.noise_hu
    # speed
    precision: str = "auto"
    channels_last: str = "auto"

    def __post_init__(self) -> None:
        if self.loss not in SEG_LOSSES:
            raise UsageError(f"--loss must be one of {', '.join(SEG_LOSSES)}, got {self.loss!r}")
        if self.mask not in MASK_RULES:
            raise UsageError(f"--mask must be one of {', '.join(MASK_RULES)}, got {self.mask!r}")
        try:
            self.grid()
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def grid(self) -> SegGrid:
        return SegGrid(self.pixel_mm, self.slice_mm)

    def sampling(self) -> SegSampling:
        return SegSampling(random_share=self.random_crops, noise_hu=self.augment_noise if self.augment else 0.0,
                           flips=self.augment)

    def model_config(self) -> dict:
        """The :func:`luna.models.registry.build_model` config."""
        return {"name": "unet2d", "context": SegSampling.context}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SegTrainConfig":
        """A config from a checkpoint's ``args``; unknown keys are ignored, paths become Paths."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: Path(value) if value is not None and name in _PATH_FIELDS else value
                      for name, value in values.items() if name in known})


def resumed_config(run_args: dict[str, Any], given: dict[str, Any]) -> SegTrainConfig:
    """The config of a resumed run: the run's own arguments, with what may change changed.

    Args:
        run_args: the ``args`` of the run's checkpoint.
        given: the flags typed on the resuming command line (and only those).

    Raises:
        UsageError: a flag that would change the data, the split, the model or the sampling,
            named with the run's value.
    """
    for name, value in sorted(given.items()):
        if name in RESUME_MAY_CHANGE or name not in run_args:
            continue
        if str(value) != str(run_args[name]):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"--resume continues a run with its own arguments; it ran with {flag} "
                             f"{run_args[name]}, not {value} (only --epochs, --num-workers, --device, "
                             f"--precision and --channels-last may change)")
    return SegTrainConfig.from_dict({**run_args, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE}})

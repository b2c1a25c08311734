"""LunaDataset: candidates -> samples, read from the crop cache.

A sample is the reference's (docs/luna16.md, "A sample"): ``(crop (1, 32, 48, 48) float32 HU, label one-hot (2,)
long, series_uid, center_irc (3,) long)``. Augmentation is not done here: it runs on whole
batches on the training device after the cache read (see luna.train.augment), so nothing random is
ever cached and validation samples never change.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from luna.data.cache import CropCache, centers_digest
from luna.data.candidates import get_candidate_info_list
from luna.data.crops import CropConfig
from luna.errors import DataError
from luna.io.scans import find_series_files
from luna.luna16.candidates import CandidateInfo, split_candidates
from luna.luna16.paths import default_cache_dir

log = logging.getLogger(__name__)


class LunaDataset(Dataset):
    """Candidates of the LUNA16 scans on disk as classification samples.

    Args:
        data_dir: LUNA16 root (``subset*/<uid>.mhd``, CSVs found there unless given).
        val_stride: every n-th scan (or candidate, see ``split``) is validation; 0 = no split.
        is_val: True for the validation part, False for training, None for everything.
        series_uid: keep only this scan (no split applied).
        split: ``"scan"`` (default; no scan on both sides) or ``"candidate"`` (the reference's).
        ratio: 0 for natural order; n > 0 for balanced sampling, one positive then n negatives.
        epoch_size: samples per epoch (default: the number of candidates selected).
        cache_dir: crop cache root (default ``$LUNA_CACHE_DIR`` or ``./cache``).
        crop: crop shape, HU clip range and the rule at the volume's edge (see :class:`CropConfig`).
        candidates_csv, annotations_csv: override the CSVs found in ``data_dir``.
        candidate_info_list: use this sorted list instead of reading the CSVs.
        seed: base seed of the per-epoch shuffle of balanced sampling (see :meth:`set_epoch`).
        return_index: append the candidate's position in :attr:`candidates` to each sample.
        crop_dtype: ``torch.float32`` (the reference) or ``torch.int16``: half the bytes to collate and
            copy to the device, where training converts it (HU values are whole numbers).
        keep: maps the selected candidates to a (N,) bool mask of those to sample; the others are
            left out of this dataset but keep their place in the cache (e.g. training negatives on
            findings the scoring ignores, see ``luna train --skip-excluded``).
        holdout_series: scans on neither side of the split (a cross-validation fold's test scans).
    """

    def __init__(self, data_dir: Path, val_stride: int = 10, is_val: bool | None = None,
                 series_uid: str | None = None, split: str = "scan", ratio: int = 0,
                 epoch_size: int | None = None, cache_dir: Path | None = None,
                 crop: CropConfig = CropConfig(), candidates_csv: Path | None = None,
                 annotations_csv: Path | None = None,
                 candidate_info_list: Sequence[CandidateInfo] | None = None, seed: int = 0,
                 return_index: bool = False, crop_dtype: torch.dtype = torch.float32,
                 keep: Callable[[list[CandidateInfo]], np.ndarray] | None = None,
                 holdout_series: Collection[str] = ()):
        self.data_dir = Path(data_dir)
        self.series_paths = find_series_files(self.data_dir)
        full = list(candidate_info_list) if candidate_info_list is not None else get_candidate_info_list(
            self.data_dir, candidates_csv, annotations_csv)

        # A cache entry holds every candidate of its scan in full-list order, whatever the split,
        # so training and validation datasets share entries.
        self.series_centers: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        row_of: dict[int, int] = {}
        for i, info in enumerate(full):
            row_of[id(info)] = len(self.series_centers[info.series_uid])
            self.series_centers[info.series_uid].append(tuple(info.center_xyz))

        self.series_digests = {uid: centers_digest(c) for uid, c in self.series_centers.items()}
        if series_uid is not None:
            if series_uid not in self.series_centers:
                raise DataError(f"series {series_uid!r} has no candidates on disk under {self.data_dir}")
            selected = [c for c in full if c.series_uid == series_uid]
        elif is_val is None:
            selected = full
        else:
            selected = split_candidates(full, val_stride, is_val, split, holdout_series)
        self.n_left_out = 0
        if keep is not None and selected:
            mask = np.asarray(keep(selected), dtype=bool)
            self.n_left_out = int((~mask).sum())
            selected = [c for c, k in zip(selected, mask) if k]
        if not selected:
            raise DataError(f"the {'validation' if is_val else 'training'} split of {self.data_dir} is empty "
                            f"(val_stride={val_stride}, split={split}); use more scans or another stride")
        self.candidates: list[CandidateInfo] = selected
        self.rows = np.array([row_of[id(c)] for c in selected], dtype=np.int64)
        self.labels = np.array([c.is_nodule for c in selected], dtype=bool)
        self.pos_ndx = np.flatnonzero(self.labels)
        self.neg_ndx = np.flatnonzero(~self.labels)
        self.ratio = ratio
        if ratio and (len(self.pos_ndx) == 0 or len(self.neg_ndx) == 0):
            raise DataError("balanced sampling needs both nodule and non-nodule candidates in the split")
        self.epoch_size = epoch_size or len(selected)
        self.seed = seed
        # Per-negative sampling weights for hard-negative mining (None: uniform).
        self.neg_weights: np.ndarray | None = None
        self.return_index = return_index
        self.crop_dtype = crop_dtype
        self.cache = CropCache(cache_dir if cache_dir is not None else default_cache_dir(), crop)
        self.set_epoch(0)
        log.info("%s: %d %s samples (%d nodules, %d non-nodules) from %d scans%s", type(self).__name__,
                 len(selected), {None: "all", True: "validation", False: "training"}[is_val],
                 len(self.pos_ndx), len(self.neg_ndx), len({c.series_uid for c in selected}),
                 f", balanced 1:{ratio}, {self.epoch_size} per epoch" if ratio else "")
        if self.n_left_out:
            log.info("%s: %d candidates left out of the samples", type(self).__name__, self.n_left_out)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle which positive/negative each index maps to (balanced sampling), the same way
        in every process for a given seed and epoch. Call before building the epoch's iterator."""
        rng = np.random.default_rng([self.seed, epoch])
        self._pos_order = rng.permutation(self.pos_ndx)
        if self.neg_weights is None:
            self._neg_order = rng.permutation(self.neg_ndx)
        else:
            # Hard-negative mining: draw this epoch's negatives in proportion to their weights.
            n_draw = self.epoch_size - self.epoch_size // (self.ratio + 1) + 1
            p = self.neg_weights / self.neg_weights.sum()
            self._neg_order = rng.choice(self.neg_ndx, size=n_draw, replace=True, p=p)
        self._all_order = rng.permutation(len(self.candidates)) if self.epoch_size != len(self.candidates) \
            else np.arange(len(self.candidates))

    def set_negative_weights(self, weights: np.ndarray | None) -> None:
        """Sampling weights for the negatives (aligned with :attr:`neg_ndx`), used from the next
        :meth:`set_epoch` on; None goes back to every negative once per pass."""
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != self.neg_ndx.shape or not np.all(weights >= 0) or weights.sum() <= 0:
                raise ValueError("negative weights must be >= 0, not all 0, one per negative")
        self.neg_weights = weights

    def __len__(self) -> int:
        return self.epoch_size

    def candidate_index(self, ndx: int) -> int:
        """Position in :attr:`candidates` of the sample at ``ndx`` this epoch."""
        if not self.ratio:
            return int(self._all_order[ndx % len(self._all_order)])
        pos_count, is_neg = divmod(ndx, self.ratio + 1)
        if not is_neg:
            return int(self._pos_order[pos_count % len(self._pos_order)])
        return int(self._neg_order[(ndx - 1 - pos_count) % len(self._neg_order)])

    def read_crop(self, cand_ndx: int) -> tuple[np.ndarray, np.ndarray]:
        """int16 crop (I, R, C) and centre voxel (3,) of candidate ``cand_ndx``."""
        info = self.candidates[cand_ndx]
        uid = info.series_uid
        crops, centers_irc = self.cache.open_entry(uid, self.series_paths[uid], self.series_centers[uid],
                                                   self.series_digests[uid])
        row = self.rows[cand_ndx]
        return crops[row], centers_irc[row]

    def __getitem__(self, ndx: int):
        cand_ndx = self.candidate_index(ndx)
        info = self.candidates[cand_ndx]
        crop, center_irc = self.read_crop(cand_ndx)
        crop_t = torch.from_numpy(np.array(crop)).unsqueeze(0).to(self.crop_dtype)
        label_t = torch.tensor([not info.is_nodule, info.is_nodule], dtype=torch.long)
        sample = (crop_t, label_t, info.series_uid, torch.from_numpy(center_irc.copy()))
        return (*sample, cand_ndx) if self.return_index else sample

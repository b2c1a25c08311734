"""Training samples of the segmentation model: 2D crops with their slice context, from the cache.

A sample is ``(x (2 * context + 1, 64, 64) float32 HU, mask (1, 64, 64) float32, index)``: one
axial slice of a scan on the segmentation grid with ``context`` slices above and below as
channels (edge slices repeat at a scan's ends, as in inference), and the nodule mask of the
middle slice.

What an epoch draws (:meth:`SegTrainDataset.set_epoch`), as the reference does: most crops lie
at a random place inside a 96 x 96 window centred on a nodule, on a slice that holds the nodule.
Each draw picks a nodule first and then one of its slices, so a 4 mm nodule on two slices is
seen as often as a 25 mm one on twelve (the small ones are the ones a detector misses).
``random_share`` of the crops lie at a random place in the lungs instead: half of them on lung
parenchyma (-950 to -600 HU), half on dense voxels inside the lungs, away from any nodule
(vessels, airway walls, the pleura): without them the model never sees a slice without a nodule
and marks every vessel it cuts across. Each crop is flipped and turned at random and gets Gaussian noise.

Everything random is drawn in :meth:`set_epoch` from ``(seed, epoch)``, so a sample depends only
on its index: the same in any worker process, and the same after a resumed run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from luna.data.crops import crop_volume
from luna.data.seg_cache import SegCache, SegEntry
from luna.luna16.sample import HU_MIN

# Voxels that count as lung for the random crops: parenchyma, not air outside the body; and
# dense voxels (above DENSE_HU) in the lungs, at least NODULE_CLEARANCE_MM clear of a nodule.
LUNG_HU = (-950, -600)
DENSE_HU = -500
NODULE_CLEARANCE_MM = 5.0
# Random crops are centred on lattice points of this many slices / pixels.
_LATTICE_STEP = (2, 4, 4)


@dataclass(frozen=True)
class SegSampling:
    """How training crops are drawn (see the module docstring).

    Args:
        context: slices above and below the middle one (channels: ``2 * context + 1``).
        crop_px: side of a crop.
        window_px: side of the window around a nodule inside which a crop lies.
        random_share: fraction of crops at random places in the lungs; 0 = the reference.
        noise_hu: standard deviation of the Gaussian noise added to a crop; 0 = none.
        flips: flip and transpose crops at random (the 8 in-plane symmetries).
    """

    context: int = 3
    crop_px: int = 64
    window_px: int = 96
    random_share: float = 0.5
    noise_hu: float = 25.0
    flips: bool = True


def context_indices(n_slices: int, index: int | np.ndarray, context: int) -> np.ndarray:
    """Slice indices of the context around ``index`` (one row per index), repeating end slices."""
    offsets = np.arange(-context, context + 1)
    return np.clip(np.asarray(index)[..., None] + offsets, 0, n_slices - 1)


@dataclass(frozen=True)
class SegScan:
    """A scan of the training set: where its entry comes from."""

    series_uid: str
    path: Path
    nodules: np.ndarray  # (M, 4) x, y, z, diameter_mm


class SegTrainDataset(Dataset):
    """Training crops of the scans ``scans`` (their entries built in ``cache`` beforehand).

    Args:
        cache: the segmentation cache.
        scans: the training scans.
        epoch_size: crops per epoch.
        sampling: how crops are drawn.
        seed: base seed; each epoch's draws come from ``(seed, epoch)``.
    """

    def __init__(self, cache: SegCache, scans: Sequence[SegScan], epoch_size: int,
                 sampling: SegSampling = SegSampling(), seed: int = 0):
        self.cache, self.scans = cache, list(scans)
        self.epoch_size, self.sampling, self.seed = int(epoch_size), sampling, int(seed)
        self._open: dict[int, SegEntry] = {}
        # Per nodule: its scan and the slices that hold its mask; per scan: lung lattice points.
        self.nodule_scan, self.nodule_center, self.nodule_slices = [], [], []
        self.lung_points: list[np.ndarray] = []
        for k in range(len(self.scans)):
            entry = self._entry(k)
            for center_irc in entry.nodules_irc:
                slices = self._slices_of(entry, center_irc)
                if len(slices):
                    self.nodule_scan.append(k)
                    self.nodule_center.append(np.rint(center_irc[1:]).astype(int))
                    self.nodule_slices.append(slices)
            self.lung_points.append(self._lung_lattice(entry))
        if not self.nodule_scan:
            raise ValueError("no training scan has an annotated nodule inside it")
        self.set_epoch(1)

    def __getstate__(self) -> dict:
        # Memory maps do not travel to DataLoader workers; each process opens its own.
        return {**self.__dict__, "_open": {}}

    def _entry(self, k: int) -> SegEntry:
        if k not in self._open:
            scan = self.scans[k]
            self._open[k] = self.cache.open(scan.series_uid, scan.path, scan.nodules)
        return self._open[k]

    @staticmethod
    def _slices_of(entry: SegEntry, center_irc: np.ndarray) -> np.ndarray:
        """Slices where the mask is set within a few pixels of a nodule's centre."""
        i, r, c = np.rint(center_irc).astype(int)
        shape = entry.mask_a.shape
        if not (0 <= i < shape[0] and 0 <= r < shape[1] and 0 <= c < shape[2]):
            return np.zeros(0, dtype=int)
        near = entry.mask_a[:, max(r - 3, 0):r + 4, max(c - 3, 0):c + 4]
        return np.flatnonzero(near.reshape(shape[0], -1).any(axis=1))

    @staticmethod
    def _lung_lattice(entry: SegEntry) -> np.ndarray:
        """(K, 3) lattice voxels of the lungs: parenchyma (HU in ``LUNG_HU``), and, as many again,
        dense voxels with mostly lung around them (vessels, airway walls, the pleura), the things a
        model must learn not to mark, away from every nodule."""
        step_i, step_r, step_c = _LATTICE_STEP
        slices = np.asarray(entry.volume.hu_a[::step_i], dtype=np.float32)
        around = ndimage.uniform_filter(slices, size=(1, 9, 9))[:, ::step_r, ::step_c]
        lattice = slices[:, ::step_r, ::step_c]
        parenchyma = np.argwhere((lattice > LUNG_HU[0]) & (lattice < LUNG_HU[1])) * np.array(_LATTICE_STEP)
        dense = np.argwhere((lattice > DENSE_HU) & (around < LUNG_HU[1])) * np.array(_LATTICE_STEP)
        if len(dense) and len(entry.nodules_irc):
            spacing = entry.volume.spacing_irc
            distance = np.linalg.norm((dense[:, None, :] - entry.nodules_irc[None]) * spacing, axis=2)
            dense = dense[(distance > entry.diameters_mm[None] / 2 + NODULE_CLEARANCE_MM).all(axis=1)]
        if len(dense) and len(parenchyma):
            rng = np.random.default_rng(len(parenchyma))
            dense = dense[rng.integers(0, len(dense), len(parenchyma))]
        return np.concatenate([parenchyma, dense])

    def set_epoch(self, epoch: int) -> None:
        """Draw the epoch's crops: which scan, slice and place, which flip, which noise seed."""
        s = self.sampling
        rng = np.random.default_rng([self.seed, int(epoch)])
        n = self.epoch_size
        is_random = rng.random(n) < s.random_share
        scan = np.empty(n, dtype=np.int64)
        center = np.empty((n, 3), dtype=np.int64)
        nodule = rng.integers(0, len(self.nodule_scan), n)
        slice_pick = rng.random(n)
        pick_scan = rng.integers(0, len(self.scans), n)
        pick_point = rng.random(n)
        for row in range(n):
            points = self.lung_points[pick_scan[row]]
            if is_random[row] and len(points):
                scan[row] = pick_scan[row]
                center[row] = points[int(pick_point[row] * len(points))]
            else:
                k = nodule[row]
                slices = self.nodule_slices[k]
                scan[row] = self.nodule_scan[k]
                center[row] = (slices[int(slice_pick[row] * len(slices))], *self.nodule_center[k])
        spare = s.window_px - s.crop_px
        self._scan, self._center = scan, center
        self._offset = rng.integers(0, spare + 1, (n, 2)) - spare // 2
        self._view = rng.integers(0, 8 if s.flips else 1, n)
        self._noise_seed = rng.integers(0, 2 ** 63, n)

    def __len__(self) -> int:
        return self.epoch_size

    def __getitem__(self, ndx: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        s = self.sampling
        entry = self._entry(int(self._scan[ndx]))
        i, r, c = (int(v) for v in self._center[ndx])
        r, c = r + int(self._offset[ndx, 0]), c + int(self._offset[ndx, 1])
        rows = context_indices(entry.volume.hu_a.shape[0], i, s.context)
        hu = crop_volume(np.asarray(entry.volume.hu_a[rows]), (s.context, r, c), (len(rows), s.crop_px, s.crop_px),
                         "pad", HU_MIN)
        mask = crop_volume(np.asarray(entry.mask_a[i:i + 1]), (0, r, c), (1, s.crop_px, s.crop_px), "pad", 0)
        x = hu.astype(np.float32)
        y = mask.astype(np.float32)
        view = int(self._view[ndx])
        if view & 4:
            x, y = x.transpose(0, 2, 1), y.transpose(0, 2, 1)
        if view & 2:
            x, y = x[:, ::-1], y[:, ::-1]
        if view & 1:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        if s.noise_hu:
            x = x + np.random.default_rng(int(self._noise_seed[ndx])).normal(0, s.noise_hu, x.shape).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)), ndx

"""Cutting samples out of a scan: the crop settings (part of the cache key) and the cropping rules.

A crop is ``shape_irc`` voxels of HU, clipped to the sample window, centred on a candidate
(docs/luna16.md, "A sample"). The settings are part of the crop cache key: change one and the
cache is rebuilt rather than silently reused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from luna.io.ct import Ct
from luna.luna16.geometry import IrcTuple
from luna.luna16.sample import CROP_SHAPE_IRC, HU_MAX, HU_MIN

# Bump when the bytes a crop holds would change for the same inputs (cropping rule, dtype...).
# 3: scans are read in LPS order (luna.io.ct), which mirrors the crops of scans stored otherwise.
CACHE_FORMAT_VERSION = 3

# What a crop does where it would leave the volume. "pad": stay centred on the candidate and fill
# the outside with air, so a sample always shows its own candidate at the centre. "shift": the
# reference's rule, move the crop inside the volume; a candidate a few slices
# from the end of a scan then gets the crop (and the score) of whatever lies 16 slices in.
CROP_EDGES = ("pad", "shift")
CROP_EDGE = "pad"

# Crops are cut from the scan resampled to isotropic voxels of this many mm, so that a nodule has
# the same shape in voxels whatever the slice thickness and pixel size; 0 keeps the scan's own
# grid (the reference). 1 mm is about the pixel of LUNA16's scans (0.5-1 mm), so a 3-4 mm nodule
# is still 3-4 voxels across; at 1.4 mm a model held less well on thick slices and other pixels
# (docs/experiments.md, "Scans at LUNA16's resolution").
CROP_VOXEL_MM = 1.0


@dataclass(frozen=True)
class CropConfig:
    """What a cached crop depends on besides the scan and the candidate centre.

    Args:
        shape_irc: crop size in voxels, (index, row, column).
        hu_min: lower clip bound in HU.
        hu_max: upper clip bound in HU.
        edge: ``"pad"`` or ``"shift"``, see :data:`CROP_EDGE`.
        voxel_mm: isotropic voxel size the scan is resampled to before cropping; 0 (the
            reference) crops the scan's own voxels. See :data:`CROP_VOXEL_MM`.
    """

    shape_irc: tuple[int, int, int] = CROP_SHAPE_IRC
    hu_min: int = HU_MIN
    hu_max: int = HU_MAX
    edge: str = CROP_EDGE
    voxel_mm: float = CROP_VOXEL_MM

    def __post_init__(self) -> None:
        if self.edge not in CROP_EDGES:
            raise ValueError(f"crop edge must be one of {', '.join(CROP_EDGES)}, got {self.edge!r}")
        if not (self.voxel_mm == 0 or 0.1 <= self.voxel_mm <= 10):
            raise ValueError(f"crop voxel size must be 0 (the scan's own voxels) or a voxel size of 0.1-10 mm, "
                             f"got {self.voxel_mm:g}")

    def key(self) -> str:
        """A short, human-readable string that names this configuration in the cache layout."""
        i, r, c = self.shape_irc
        grid = f"-iso{self.voxel_mm:g}mm" if self.voxel_mm else ""
        return f"v{CACHE_FORMAT_VERSION}-{i}x{r}x{c}-hu{self.hu_min}_{self.hu_max}-{self.edge}{grid}"

    def as_dict(self) -> dict:
        """The fields as stored in a cache entry's marker; ``voxel_mm`` only when set, so that
        entries written before it existed (the scan's own voxels) stay valid."""
        fields = asdict(self)
        if not self.voxel_mm:
            del fields["voxel_mm"]
        return fields


def crop_bounds(center: int, width: int, size: int) -> tuple[int, int]:
    """[start, end) of a crop of ``width`` centred on ``center``, shifted to lie inside [0, size)."""
    start = int(round(center - width / 2))
    end = start + width
    if start < 0:
        start, end = 0, width
    if end > size:
        start, end = max(size - width, 0), size
    return start, end


def crop_volume(volume: np.ndarray, center_irc: Sequence[int], shape_irc: Sequence[int],
                edge: str = CROP_EDGE, fill_value: int = HU_MIN) -> np.ndarray:
    """Crop ``shape_irc`` voxels around ``center_irc``.

    Args:
        volume: (I, R, C) voxels.
        center_irc: the voxel that lands at index ``shape // 2`` of the crop.
        shape_irc: crop size.
        edge: where the crop would leave the volume: ``"pad"`` keeps it centred and fills the
            outside with ``fill_value``; ``"shift"`` (the reference) moves it inside the volume,
            padding only a volume smaller than the crop.
        fill_value: HU of the padding (air).

    Returns:
        An array of ``shape_irc`` (a view into ``volume`` when nothing had to be padded).
    """
    if edge == "shift":
        src = [crop_bounds(c, w, s) for c, w, s in zip(center_irc, shape_irc, volume.shape)]
        dst = [(0, end - start) for start, end in src]
    else:
        starts = [int(round(c - w / 2)) for c, w in zip(center_irc, shape_irc)]
        src = [(max(a, 0), min(a + w, s)) for a, w, s in zip(starts, shape_irc, volume.shape)]
        dst = [(lo - a, hi - a) for (lo, hi), a in zip(src, starts)]
    chunk = volume[tuple(slice(lo, hi) for lo, hi in src)]
    if chunk.shape == tuple(shape_irc):
        return chunk
    padded = np.full(shape_irc, fill_value, dtype=volume.dtype)
    padded[tuple(slice(lo, hi) for lo, hi in dst)] = chunk
    return padded


def resample_volume(volume: np.ndarray, spacing_irc: Sequence[float],
                    voxel_mm: float | Sequence[float]) -> np.ndarray:
    """The volume on a grid of ``voxel_mm`` voxels, by trilinear interpolation.

    Output voxel ``j`` (on each axis) lies at input voxel ``j * voxel_mm / spacing``, so voxel 0
    stays voxel 0 and the grid spans the scan. The values are rounded back to the input dtype.
    Trilinear interpolation is linear interpolation along each axis in turn; done that way it
    takes a second for a 512 x 512 x 300 scan where a general affine resampler takes several.

    Args:
        volume: (I, R, C) voxels.
        spacing_irc: mm per voxel along I, R and C.
        voxel_mm: the output voxel size: one size (cubes) or one per axis (I, R, C).

    Returns:
        The resampled (I', R', C') volume.
    """
    voxel_irc = np.broadcast_to(np.asarray(voxel_mm, dtype=np.float64), (3,))
    step = voxel_irc / np.asarray(spacing_irc, dtype=np.float64)  # input voxels per output voxel
    out = volume
    for axis, (n, s) in enumerate(zip(volume.shape, step)):
        if s != 1.0:
            out = _resample_axis(out, axis, s, int(np.floor((n - 1) / s)) + 1)
    if out is volume:
        return volume.copy()
    return np.rint(out, out=out).astype(volume.dtype, copy=False)


def _resample_axis(volume: np.ndarray, axis: int, step: float, size: int) -> np.ndarray:
    """Linear interpolation along one axis: output ``j`` at input position ``j * step``, float32."""
    position = np.arange(size) * step
    below = np.minimum(np.floor(position).astype(np.int64), volume.shape[axis] - 1)
    above = np.minimum(below + 1, volume.shape[axis] - 1)
    shape = [1] * volume.ndim
    shape[axis] = size
    weight = (position - below).astype(np.float32).reshape(shape)
    low = np.take(volume, below, axis=axis).astype(np.float32, copy=False)
    high = np.take(volume, above, axis=axis).astype(np.float32, copy=False)
    high -= low
    high *= weight
    low += high
    return low


class Cropper:
    """Cuts crops of one scan as ``crop`` says, resampling the scan once when ``crop.voxel_mm`` is set.

    Args:
        ct: the scan.
        crop: shape, edge rule and voxel size of the crops.
    """

    def __init__(self, ct: Ct, crop: CropConfig):
        self.ct, self.crop = ct, crop
        self.shape_irc = tuple(int(n) for n in crop.shape_irc)
        self._volume = ct.hu_a
        self._step = None
        if crop.voxel_mm:
            spacing_irc = np.asarray(ct.spacing_xyz[::-1], dtype=np.float64)
            self._volume = resample_volume(ct.hu_a, spacing_irc, crop.voxel_mm)
            self._step = crop.voxel_mm / spacing_irc  # scan voxels per resampled voxel

    def crop_at(self, center_xyz: Sequence[float]) -> tuple[np.ndarray, IrcTuple]:
        """The int16 crop around a world point and its centre voxel in the scan's own grid.

        With ``voxel_mm`` > 0 the crop's voxels are those of the resampled scan; its axes are
        still the scan's I, R and C.

        Raises:
            DataError: the point lies outside the scan.
        """
        center_irc = self.ct.center_irc_checked(center_xyz)
        if self._step is None:
            return crop_volume(self._volume, center_irc, self.shape_irc, self.crop.edge), center_irc
        center_iso = [int(round(c)) for c in self.ct.xyz2irc_float(center_xyz) / self._step]
        return crop_volume(self._volume, center_iso, self.shape_irc, self.crop.edge), center_irc


def crop_candidate(ct: Ct, center_xyz: Sequence[float], shape_irc: Sequence[int] = CROP_SHAPE_IRC,
                   edge: str = CROP_EDGE, voxel_mm: float = CROP_VOXEL_MM) -> tuple[np.ndarray, IrcTuple]:
    """One crop of a scan (the reference's ``getRawCandidate``): see :class:`Cropper`, which is the
    faster way to cut many crops of one scan."""
    return Cropper(ct, CropConfig(shape_irc=tuple(shape_irc), edge=edge, voxel_mm=voxel_mm)).crop_at(center_xyz)

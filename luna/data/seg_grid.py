"""The voxel grid the segmentation model works on: a scan resampled to fixed millimetres.

The U-Net reads axial slices as images, so what it learns is tied to the size of a pixel and
the distance between slices. Scans come at 0.5-1 mm pixels and 0.6-2.5 mm slices (LUNA16), the
built-in data at 1.2-1.6 mm and 1.25-2.5 mm: on each scan's own grid a nodule of 6 mm would be
4 pixels in one scan and 10 in another, and its 7-slice context would span 4 mm or 17 mm. On a
fixed grid (:class:`SegGrid`, stored in the model's checkpoint) every scan looks alike to the
model, a model trained on one kind of scan works on another, and a 512 x 512 scan costs the
model a third of its pixels. ``pixel_mm = slice_mm = 0`` keeps each scan's own grid (the
reference).

A :class:`GridVolume` is the resampled HU with its own geometry (same origin and direction,
its own spacing), so voxel positions on it convert to world millimetres exactly as a scan's do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from luna.data.crops import resample_volume
from luna.io.ct import Ct
from luna.luna16.geometry import XyzTuple, irc2xyz, xyz2irc_float

# The defaults: about the built-in scans' own pixels and slices (docs/results.md, "Detection").
GRID_PIXEL_MM = 1.25
GRID_SLICE_MM = 2.0

# The lung region (:func:`lung_region`): dense tissue is above BODY_HU; the lungs are the large
# pockets of air inside the body; the region keeps a margin of LUNG_MARGIN_MM around them.
BODY_HU = -500
MIN_LUNG_ML = 500.0
LUNG_MARGIN_MM = 10.0


@dataclass(frozen=True)
class SegGrid:
    """Voxel size of the segmentation grid; 0 on an axis keeps the scan's own spacing there.

    Args:
        pixel_mm: size of a pixel of an axial slice (rows and columns).
        slice_mm: distance between slices.
    """

    pixel_mm: float = GRID_PIXEL_MM
    slice_mm: float = GRID_SLICE_MM

    def __post_init__(self) -> None:
        for name, value in (("pixel_mm", self.pixel_mm), ("slice_mm", self.slice_mm)):
            if not (value == 0 or 0.2 <= value <= 10):
                raise ValueError(f"segmentation grid {name} must be 0 (the scan's own) or 0.2-10 mm, got {value:g}")

    def voxel_mm_irc(self, spacing_irc: Sequence[float]) -> np.ndarray:
        """The grid's voxel size on a scan of ``spacing_irc`` (its own where the grid says 0)."""
        wanted = np.array([self.slice_mm, self.pixel_mm, self.pixel_mm], dtype=np.float64)
        return np.where(wanted > 0, wanted, np.asarray(spacing_irc, dtype=np.float64))

    def as_dict(self) -> dict[str, float]:
        return {"pixel_mm": float(self.pixel_mm), "slice_mm": float(self.slice_mm)}


@dataclass
class GridVolume:
    """HU on a grid with its geometry: what :class:`~luna.io.ct.Ct` is for a scan's own grid.

    Args:
        hu_a: (I, R, C) int16 HU.
        origin_xyz: world position (mm) of voxel (0, 0, 0).
        spacing_xyz: mm per voxel along x, y, z.
        direction: 3x3 direction cosines.
    """

    hu_a: np.ndarray
    origin_xyz: XyzTuple
    spacing_xyz: XyzTuple
    direction: np.ndarray

    @property
    def spacing_irc(self) -> np.ndarray:
        return np.asarray(self.spacing_xyz[::-1], dtype=np.float64)

    def xyz2irc_float(self, center_xyz: Sequence[float]) -> np.ndarray:
        return xyz2irc_float(center_xyz, self.origin_xyz, self.spacing_xyz, self.direction)

    def irc2xyz(self, center_irc: Sequence[float]) -> XyzTuple:
        return irc2xyz(center_irc, self.origin_xyz, self.spacing_xyz, self.direction)

    def geometry(self) -> dict[str, list[float]]:
        """Origin, spacing and direction as JSON-able lists."""
        return {"origin_xyz": [float(v) for v in self.origin_xyz],
                "spacing_xyz": [float(v) for v in self.spacing_xyz],
                "direction": [float(v) for v in np.asarray(self.direction).ravel()]}


def to_grid(ct: Ct, grid: SegGrid) -> GridVolume:
    """``ct`` resampled to ``grid`` (trilinear; voxel 0 stays voxel 0, so the origin is kept).

    An axis whose spacing already equals the grid's within 1% is not resampled there: blurring
    a scan to move it by a hundredth of a voxel would only cost detail.
    """
    spacing_irc = np.asarray(ct.spacing_xyz[::-1], dtype=np.float64)
    voxel_irc = grid.voxel_mm_irc(spacing_irc)
    voxel_irc = np.where(np.abs(voxel_irc / spacing_irc - 1) < 0.01, spacing_irc, voxel_irc)
    hu_a = ct.hu_a if np.array_equal(voxel_irc, spacing_irc) else resample_volume(ct.hu_a, spacing_irc, voxel_irc)
    return GridVolume(hu_a, XyzTuple(*ct.origin_xyz), XyzTuple(*(float(v) for v in voxel_irc[::-1])),
                      np.asarray(ct.direction, dtype=np.float64).reshape(3, 3))


def lung_air(hu_a: np.ndarray, spacing_irc: Sequence[float]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The body of a chest scan and the air inside it (lungs and airways), as masks of ``hu_a``.

    The body is the largest connected part above ``BODY_HU``; with its holes filled slice by
    slice, the air inside it is the lungs, of which the pockets of more than a few millilitres
    count. Returns ``(body, lungs)``: ``lungs`` is None when the air found is less than
    ``MIN_LUNG_ML`` (an open body outline, a scan that is not a chest), and both are None when
    nothing is dense.
    """
    dense = np.asarray(hu_a) > BODY_HU
    labels, count = ndimage.label(dense)
    if count == 0:
        return None, None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == sizes.argmax()
    per_slice = np.zeros((3, 3, 3), dtype=bool)
    per_slice[1] = ndimage.generate_binary_structure(2, 1)
    air = ndimage.binary_fill_holes(body, structure=per_slice) & ~dense
    labels, count = ndimage.label(air)
    voxel_ml = float(np.prod(spacing_irc)) / 1000
    air_ml = np.bincount(labels.ravel()) * voxel_ml
    air_ml[0] = 0
    pockets = np.flatnonzero(air_ml > 0.01 * MIN_LUNG_ML)
    if air_ml[pockets].sum() < MIN_LUNG_ML:
        return body, None
    return body, np.isin(labels, pockets)


def lung_region(volume: GridVolume) -> tuple[slice, slice, slice]:
    """The box of a scan that holds its lungs (:func:`lung_air`), with a margin: where nodules can be.

    Segmenting only this box costs a fifth of the whole scan on the built-in data, and nothing
    outside the chest can become a finding. Without lungs the box of the body is used, and the
    whole scan when there is no body either: slower, never a lung left out.

    Works on every second voxel: the margin is far larger than the voxels this loses.
    """
    step = 2
    body, lungs = lung_air(volume.hu_a[::step, ::step, ::step], volume.spacing_irc * step)
    if body is None:
        return tuple(slice(0, n) for n in volume.hu_a.shape)
    corners = np.argwhere(lungs if lungs is not None else body)
    margin = np.ceil(LUNG_MARGIN_MM / volume.spacing_irc).astype(int)
    low = np.maximum(corners.min(axis=0) * step - margin, 0)
    high = np.minimum(corners.max(axis=0) * step + step + margin, volume.hu_a.shape)
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high))

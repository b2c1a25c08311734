"""One CT scan in memory: read with SimpleITK, HU clipped to the sample window, and its geometry.

A :class:`Ct` is what every later step starts from: ``hu_a`` (int16, indexed I, R, C) and the
origin, spacing and direction that map voxels to world millimetres (docs/luna16.md, "Geometry").
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from luna.errors import DataError
from luna.io.metaimage import read_mhd_header
from luna.luna16.geometry import IrcTuple, XyzTuple, irc2xyz, xyz2irc, xyz2irc_float
from luna.luna16.sample import HU_MAX, HU_MIN

log = logging.getLogger(__name__)


class Ct:
    """A scan in memory: HU clipped to [HU_MIN, HU_MAX] as int16, indexed (I, R, C).

    Args:
        mhd_path: the scan's ``.mhd`` header (its ``.raw`` beside it).
        series_uid: defaults to the file stem.
    """

    def __init__(self, mhd_path: Path, series_uid: str | None = None):
        self.path = Path(mhd_path)
        self.series_uid = series_uid or self.path.stem
        read_mhd_header(self.path)
        try:
            image = sitk.ReadImage(str(self.path))
        except RuntimeError as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), "unreadable")
            raise DataError(f"{self.path}: SimpleITK cannot read it: {first.strip()[:200]}") from None
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise DataError(f"{self.path}: expected a 3-D single-channel image")
        # Clip once, straight into int16: [-1000, 1000] fits, and it halves memory vs float32.
        voxels = sitk.GetArrayViewFromImage(image)
        self.hu_a = np.clip(voxels, HU_MIN, HU_MAX).astype(np.int16, copy=False)
        self.origin_xyz = XyzTuple(*image.GetOrigin())
        self.spacing_xyz = XyzTuple(*image.GetSpacing())
        self.direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)

    def xyz2irc(self, center_xyz: Sequence[float]) -> IrcTuple:
        return xyz2irc(center_xyz, self.origin_xyz, self.spacing_xyz, self.direction)

    def irc2xyz(self, center_irc: Sequence[float]) -> XyzTuple:
        return irc2xyz(center_irc, self.origin_xyz, self.spacing_xyz, self.direction)

    def xyz2irc_float(self, center_xyz: Sequence[float]) -> np.ndarray:
        """Continuous voxel coordinates (I, R, C) of a world point, before rounding."""
        return xyz2irc_float(center_xyz, self.origin_xyz, self.spacing_xyz, self.direction)

    def center_irc_checked(self, center_xyz: Sequence[float]) -> IrcTuple:
        """Voxel of a world point; a point outside the volume is an input error."""
        irc_float = self.xyz2irc_float(center_xyz)
        center_irc = self.xyz2irc(center_xyz)
        # Half a voxel of slack: a centre on the outer face of an edge voxel is still inside.
        if any(not (-0.5 <= f < s - 0.5) for f, s in zip(irc_float, self.hu_a.shape)):
            x, y, z = center_xyz
            raise DataError(f"series {self.series_uid}: candidate centre ({x:.2f}, {y:.2f}, {z:.2f}) mm "
                            f"is outside the scan (voxel {tuple(center_irc)}, shape {self.hu_a.shape}, "
                            f"file {self.path})")
        return center_irc

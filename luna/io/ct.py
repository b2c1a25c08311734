"""One CT scan in memory: read with SimpleITK, HU clipped to the sample window, and its geometry.

A :class:`Ct` is what every later step starts from: ``hu_a`` (int16, indexed I, R, C) and the
origin, spacing and direction that map voxels to world millimetres (docs/luna16.md, "Geometry").
It reads every format :mod:`luna.io.scans` finds: ``.mhd``, ``.mha``, ``.nii``, ``.nii.gz``,
``.nrrd`` and DICOM series folders.

Whatever order a file stores its voxels in, the array comes out in one orientation, LUNA16's
own (LPS): columns run toward the patient's left, rows toward the back, slices toward the head,
so the direction matrix is the identity up to a small rotation. The same scan stored in
another axis order (a DICOM series is always stacked along its slice normal, a NIfTI file is
often stored bottom-up) then gives the same array, the same crops and the same scores; the
model always sees the head-foot axis as the crop's first one.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from luna.errors import DataError, library_reason
from luna.io.dicom import read_series
from luna.io.metaimage import read_mhd_header
from luna.io.scans import SCAN_KINDS, scan_suffix, scan_uid
from luna.luna16.geometry import IrcTuple, XyzTuple, irc2xyz, xyz2irc, xyz2irc_float
from luna.luna16.sample import HU_MAX, HU_MIN

log = logging.getLogger(__name__)

ORIENTATION = "LPS"
# SimpleITK picks its reader by the extension in lower case only; naming it reads SCAN.MHD too.
IMAGE_IO = {".mhd": "MetaImageIO", ".mha": "MetaImageIO", ".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO",
            ".nrrd": "NrrdImageIO"}

# A chest CT in HU has air (about -1000) around the body and in the lungs. A scan whose darkest
# hundredth of voxels lies above this was most likely stored without its rescale (a scanner's
# raw values, air near 0) or in another unit: every crop would be wrong and no step would fail,
# so the reader warns.
AIR_CHECK_HU = -500


def read_image(path: Path, series_uid: str | None = None) -> tuple[sitk.Image, str]:
    """Read a scan file or a DICOM series folder as a 3-D image in HU, and name it.

    Args:
        path: a scan file or a DICOM series folder.
        series_uid: for a DICOM folder, the series to read (default: its only one); for a file,
            the name to give the scan (default: the file name without its extension).

    Returns:
        ``(image, series_uid)`` as stored in the file, not yet reoriented.
    """
    path = Path(path)
    if path.is_dir():
        return read_series(path, series_uid)
    suffix = scan_suffix(path)
    if suffix is None and path.exists():
        raise DataError(f"{path}: not a scan luna reads (expected {SCAN_KINDS})")
    if suffix in (".mhd", ".mha"):
        read_mhd_header(path)
    elif not path.exists():
        raise DataError(f"scan {path} does not exist")
    try:
        image = sitk.ReadImage(str(path), imageIO=IMAGE_IO[suffix]) if suffix else sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(f"{path}: SimpleITK cannot read it: {library_reason(exc)}") from None
    return image, series_uid or scan_uid(path)


class Ct:
    """A scan in memory: HU clipped to [HU_MIN, HU_MAX] as int16, indexed (I, R, C), in LPS order.

    Args:
        path: a scan file (``.mhd`` with its ``.raw`` beside it, ``.mha``, ``.nii``, ``.nii.gz``,
            ``.nrrd``) or a folder holding a DICOM series.
        series_uid: for a DICOM folder, which series to read (needed when it holds several);
            for a file, the scan's name (default: the file name without its extension).

    Raises:
        DataError: one line naming the path for anything that is not a readable 3-D CT.
    """

    def __init__(self, path: Path, series_uid: str | None = None):
        self.path = Path(path)
        image, self.series_uid = read_image(self.path, series_uid)
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise DataError(f"{self.path}: a {image.GetDimension()}-D image of {image.GetNumberOfComponentsPerPixel()} "
                            "value(s) per voxel; a CT scan is 3-D with one")
        if sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()) != ORIENTATION:
            image = sitk.DICOMOrient(image, ORIENTATION)
        voxels = sitk.GetArrayViewFromImage(image)
        if np.issubdtype(voxels.dtype, np.floating):
            voxels = np.rint(voxels)  # a non-integer rescale slope: round, do not truncate
        # Clip once, straight into int16: [-1000, 1000] fits, and it halves memory vs float32.
        self.hu_a = np.clip(voxels, HU_MIN, HU_MAX).astype(np.int16, copy=False)
        self.origin_xyz = XyzTuple(*image.GetOrigin())
        self.spacing_xyz = XyzTuple(*image.GetSpacing())
        self.direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        self._warn_unless_hu()

    def _warn_unless_hu(self) -> None:
        # Every 4th slice and 8th row and column: a few thousand voxels say where air is.
        darkest = float(np.percentile(self.hu_a[::4, ::8, ::8], 1))
        if darkest > AIR_CHECK_HU:
            log.warning("%s: its darkest voxels are at %.0f or above, where a chest CT in Hounsfield units has "
                        "air at about -1000; are its values HU? (stored DICOM values need the rescale applied)",
                        self.path, darkest)

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

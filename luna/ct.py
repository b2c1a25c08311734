"""One CT scan: read a MetaImage with SimpleITK, clip to the HU range, crop around a point.

The header is checked by hand before SimpleITK sees the file, because SimpleITK's own errors
for a missing or truncated ``.raw`` are long and name the wrong thing.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from luna.config import CROP_EDGE, HU_MAX, HU_MIN
from luna.errors import DataError
from luna.geometry import IrcTuple, XyzTuple, irc2xyz, xyz2irc, xyz2irc_float

log = logging.getLogger(__name__)

# Bytes per voxel of the MetaImage element types a CT can sensibly use.
_ELEMENT_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
                  "MET_UINT": 4, "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG": 8, "MET_ULONG": 8}


def read_mhd_header(mhd_path: Path) -> dict[str, str]:
    """Parse a MetaImage header into {key: value} and check it describes a readable 3-D scan.

    Raises:
        DataError: unreadable header, not 3-D, unknown element type, bad DimSize, or a data file
            that is missing or shorter than the header promises.
    """
    mhd_path = Path(mhd_path)
    try:
        text = mhd_path.read_bytes()[:65536].decode("ascii", errors="strict")
    except FileNotFoundError:
        raise DataError(f"scan header {mhd_path} does not exist") from None
    except UnicodeDecodeError:
        raise DataError(f"{mhd_path}: not a MetaImage text header") from None
    header: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break  # inline data may follow
    for key in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if key not in header:
            raise DataError(f"{mhd_path}: malformed header, no {key} line")
    if header["NDims"] != "3":
        raise DataError(f"{mhd_path}: image is {header['NDims']}-D (NDims = {header['NDims']}); a CT scan must be 3-D")
    try:
        dims = [int(v) for v in header["DimSize"].split()]
    except ValueError:
        raise DataError(f"{mhd_path}: DimSize is not three integers: {header['DimSize']!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise DataError(f"{mhd_path}: DimSize must be three positive integers, got {header['DimSize']!r}")
    element_type = header["ElementType"]
    if element_type not in _ELEMENT_BYTES:
        raise DataError(f"{mhd_path}: unsupported ElementType {element_type!r}")
    compressed = header.get("CompressedData", "False").lower() == "true"
    data_file = header["ElementDataFile"]
    if data_file not in ("LOCAL", "LIST") and "%" not in data_file and not compressed:
        raw_path = mhd_path.parent / data_file
        if not raw_path.is_file():
            raise DataError(f"{mhd_path}: its data file {raw_path.name} is missing")
        expected = int(np.prod(dims)) * _ELEMENT_BYTES[element_type]
        actual = raw_path.stat().st_size
        if actual < expected:
            raise DataError(f"{raw_path}: truncated, {actual} bytes but the header needs {expected} "
                            f"({'x'.join(map(str, dims))} {element_type})")
    return header


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


def resample_isotropic(volume: np.ndarray, spacing_irc: Sequence[float], voxel_mm: float) -> np.ndarray:
    """The volume on a grid of ``voxel_mm`` cubes, by trilinear interpolation.

    Output voxel ``j`` (on each axis) lies at input voxel ``j * voxel_mm / spacing``, so voxel 0
    stays voxel 0 and the grid spans the scan. The values are rounded back to the input dtype.

    Args:
        volume: (I, R, C) voxels.
        spacing_irc: mm per voxel along I, R and C.
        voxel_mm: the output voxel size.

    Returns:
        The resampled (I', R', C') volume.
    """
    step = voxel_mm / np.asarray(spacing_irc, dtype=np.float64)  # input voxels per output voxel
    shape = [int(np.floor((n - 1) / s)) + 1 for n, s in zip(volume.shape, step)]
    out = ndimage.affine_transform(volume.astype(np.float32, copy=False), step, output_shape=shape,
                                   order=1, mode="nearest")
    return np.rint(out, out=out).astype(volume.dtype, copy=False)


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
        self._resampled: dict[float, np.ndarray] = {}

    def xyz2irc(self, center_xyz: Sequence[float]) -> IrcTuple:
        return xyz2irc(center_xyz, self.origin_xyz, self.spacing_xyz, self.direction)

    def irc2xyz(self, center_irc: Sequence[float]) -> XyzTuple:
        return irc2xyz(center_irc, self.origin_xyz, self.spacing_xyz, self.direction)

    def center_irc_checked(self, center_xyz: Sequence[float]) -> IrcTuple:
        """Voxel of a world point; a point outside the volume is an input error."""
        irc_float = xyz2irc_float(center_xyz, self.origin_xyz, self.spacing_xyz, self.direction)
        center_irc = self.xyz2irc(center_xyz)
        # Half a voxel of slack: a centre on the outer face of an edge voxel is still inside.
        if any(not (-0.5 <= f < s - 0.5) for f, s in zip(irc_float, self.hu_a.shape)):
            x, y, z = center_xyz
            raise DataError(f"series {self.series_uid}: candidate centre ({x:.2f}, {y:.2f}, {z:.2f}) mm "
                            f"is outside the scan (voxel {tuple(center_irc)}, shape {self.hu_a.shape}, "
                            f"file {self.path})")
        return center_irc

    def resampled(self, voxel_mm: float) -> np.ndarray:
        """The scan on isotropic ``voxel_mm`` voxels (:func:`resample_isotropic`), made once."""
        if voxel_mm not in self._resampled:
            self._resampled[voxel_mm] = resample_isotropic(self.hu_a, self.spacing_xyz[::-1], voxel_mm)
        return self._resampled[voxel_mm]

    def get_raw_candidate(self, center_xyz: Sequence[float], width_irc: Sequence[int],
                          edge: str = CROP_EDGE, voxel_mm: float = 0.0) -> tuple[np.ndarray, IrcTuple]:
        """The int16 crop of ``width_irc`` voxels around a world point (``edge``: see
        :func:`crop_volume`), and its centre voxel in the scan's own grid.

        With ``voxel_mm`` > 0 the voxels are those of the scan resampled to that isotropic size
        (:meth:`resampled`); the crop's axes are still the scan's I, R and C.
        """
        center_irc = self.center_irc_checked(center_xyz)
        if not voxel_mm:
            return crop_volume(self.hu_a, center_irc, width_irc, edge), center_irc
        center_f = xyz2irc_float(center_xyz, self.origin_xyz, self.spacing_xyz, self.direction)
        step = voxel_mm / np.asarray(self.spacing_xyz[::-1], dtype=np.float64)
        center_iso = [int(round(c)) for c in np.asarray(center_f) / step]
        return crop_volume(self.resampled(voxel_mm), center_iso, width_irc, edge), center_irc

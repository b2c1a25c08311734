"""DICOM series folders: which series a folder holds, and one series checked and read as a volume.

A DICOM CT is a folder of files, one per slice, and one folder may hold several series (a
localizer, a second reconstruction). SimpleITK (GDCM) lists them by SeriesInstanceUID, and its
ImageSeriesReader stacks the slices and applies RescaleSlope/Intercept, which gives HU. What it
does not do is refuse a series that stacks into a wrong volume: a missing or duplicated slice, a
tilted gantry or a single localizer image come through with a warning at most, and the world
coordinates of everything found in them would be silently wrong. So every slice's header is read
and checked first, and such a series is one error line naming the folder and the file.

A folder's DICOM files are those named ``*.dcm`` (any case) and any other file that starts with
the DICOM preamble (``DICM`` at byte 128): exports often name slices by number or by UID with no
extension. GDCM looks at the files of the folder itself, not at its subfolders.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from luna.errors import DataError, library_reason

log = logging.getLogger(__name__)

DICOM_SUFFIX = ".dcm"
# The flag of the commands that take a DICOM folder from the user; the error for a folder of
# several series names it, so that the user knows how to pick one.
SERIES_FLAG = "--series-uid"
CT_MODALITY = "CT"
# Header fields, as SimpleITK names them (group|element).
TAG_MODALITY = "0008|0060"
TAG_POSITION = "0020|0032"      # ImagePositionPatient: the first voxel's centre, mm
TAG_ORIENTATION = "0020|0037"   # ImageOrientationPatient: row and column direction cosines
_PREAMBLE_BYTES = 128
_MAGIC = b"DICM"
# Slice positions are decimal strings of a few digits: steps may differ from even spacing by this
# much (fraction of the spacing, and mm) before a slice counts as missing or duplicated.
SPACING_TOLERANCE = 0.01
SPACING_TOLERANCE_MM = 0.01
ORIENTATION_TOLERANCE = 1e-4


def is_dicom_file(path: Path) -> bool:
    """True for ``*.dcm`` and for any file that begins with the DICOM preamble."""
    if path.name.lower().endswith(DICOM_SUFFIX):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(_PREAMBLE_BYTES + len(_MAGIC))
    except OSError:
        return False
    return head[_PREAMBLE_BYTES:] == _MAGIC


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder`` (not its subfolders), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_dicom_file(p))


@contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """ITK prints warnings on stderr ("No Series were found", "Non uniform sampling"); the checks
    here turn each such case into an error of their own, so its text would only be noise."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def list_series(folder: Path) -> dict[str, list[Path]]:
    """Series uid -> its files, for every DICOM series directly in ``folder`` (GDCM's listing).

    Files GDCM cannot parse belong to no series; nothing is checked here (see :func:`read_series`).
    """
    reader = sitk.ImageSeriesReader
    with _itk_warnings_off():
        uids = reader.GetGDCMSeriesIDs(str(folder))
        return {uid: [Path(name) for name in reader.GetGDCMSeriesFileNames(str(folder), uid)] for uid in uids}


def describe_series(series: dict[str, list[Path]]) -> str:
    """``uid (n slices); uid (1 slice)``: what a folder holds, for an error line."""
    return "; ".join(f"{uid} ({len(files)} slice{'s' * (len(files) != 1)})" for uid, files in sorted(series.items()))


@dataclass(frozen=True)
class SliceHeader:
    """What the checks need from one file's header."""

    path: Path
    modality: str
    position_xyz: np.ndarray     # (3,) mm
    orientation: np.ndarray      # (6,) row then column direction cosines
    size: tuple[int, ...]        # (columns, rows, frames)


def _numbers(text: str, count: int, path: Path, field: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.strip().split("\\")], dtype=np.float64)
    except ValueError:
        values = np.empty(0)
    if values.shape != (count,) or not np.isfinite(values).all():
        raise DataError(f"{path}: {field} is {text.strip()!r}, not {count} numbers")
    return values


def read_slice_header(path: Path) -> SliceHeader:
    """One file's header (no pixels). Raises DataError for a file GDCM cannot read."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.LoadPrivateTagsOff()
    reader.SetFileName(str(path))
    try:
        with _itk_warnings_off():
            reader.ReadImageInformation()
    except RuntimeError:
        raise DataError(f"{path}: unreadable DICOM file") from None

    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""

    for key, field in ((TAG_POSITION, "ImagePositionPatient (0020,0032)"),
                       (TAG_ORIENTATION, "ImageOrientationPatient (0020,0037)")):
        if not tag(key):
            raise DataError(f"{path}: no {field}, so its place in the volume is unknown")
    return SliceHeader(path, tag(TAG_MODALITY).upper(),
                       _numbers(tag(TAG_POSITION), 3, path, "ImagePositionPatient (0020,0032)"),
                       _numbers(tag(TAG_ORIENTATION), 6, path, "ImageOrientationPatient (0020,0037)"),
                       tuple(reader.GetSize()))


def pick_series(folder: Path, series: dict[str, list[Path]], series_uid: str | None) -> str:
    """The uid to read: ``series_uid`` if the folder holds it, else the folder's only series."""
    if series_uid is not None:
        if series_uid not in series:
            raise DataError(f"{folder}: no DICOM series {series_uid} in this folder; "
                            f"it holds {describe_series(series)}")
        return series_uid
    if len(series) > 1:
        raise DataError(f"{folder} holds {len(series)} DICOM series: {describe_series(series)}; "
                        f"pick one with {SERIES_FLAG} UID")
    return next(iter(series))


def check_modality(where: str, headers: list[SliceHeader]) -> None:
    """Refuse a series that is not CT; a series that does not say is let through with a warning."""
    other = next((h for h in headers if h.modality and h.modality != CT_MODALITY), None)
    if other is not None:
        raise DataError(f"{where}: modality {other.modality} ({other.path.name}), not CT")
    if not any(h.modality for h in headers):
        log.warning("%s: no Modality (0008,0060) in its headers; reading it as CT", where)


def order_slices(where: str, headers: list[SliceHeader]) -> list[SliceHeader]:
    """The slices sorted along their normal, checked to stack into one evenly spaced volume.

    Raises:
        DataError: a single 2-D image or a multi-frame file, slices of different sizes or
            orientations, two slices at one position, a gap, or a gantry tilt.
    """
    if len(headers) == 1:
        only = headers[0]
        if len(only.size) == 3 and only.size[2] > 1:
            raise DataError(f"{where}: one multi-frame file ({only.path.name}, {only.size[2]} frames); luna reads "
                            "series of one file per slice")
        raise DataError(f"{where}: a single 2-D image ({only.path.name}), not a CT volume (a localizer?)")
    for h in headers:
        if h.size[:2] != headers[0].size[:2]:
            raise DataError(f"{where}: slices {headers[0].path.name} ({headers[0].size[0]}x{headers[0].size[1]}) and "
                            f"{h.path.name} ({h.size[0]}x{h.size[1]}) differ in size")
        if np.abs(h.orientation - headers[0].orientation).max() > ORIENTATION_TOLERANCE:
            raise DataError(f"{where}: slices {headers[0].path.name} and {h.path.name} have different orientations "
                            "(ImageOrientationPatient), so they do not stack into one volume")
    row, col = headers[0].orientation[:3], headers[0].orientation[3:]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    along_mm = np.array([h.position_xyz @ normal for h in headers])
    order = np.argsort(along_mm, kind="stable")
    headers = [headers[i] for i in order]
    along_mm = along_mm[order]
    steps_mm = np.diff(along_mm)
    spacing_mm = float(np.median(steps_mm))
    tolerance_mm = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE * spacing_mm)
    for k in np.flatnonzero(steps_mm < tolerance_mm)[:1]:
        raise DataError(f"{where}: duplicated slice, {headers[k].path.name} and {headers[k + 1].path.name} are "
                        f"both at {along_mm[k]:.3f} mm along the slice normal")
    for k in np.flatnonzero(np.abs(steps_mm - spacing_mm) > tolerance_mm)[:1]:
        raise DataError(f"{where}: uneven slice positions, {headers[k].path.name} and {headers[k + 1].path.name} "
                        f"are {steps_mm[k]:.3f} mm apart where the others are {spacing_mm:.3f} mm (a missing slice?)")
    step_xyz = (headers[-1].position_xyz - headers[0].position_xyz) / (len(headers) - 1)
    shift_mm = float(np.linalg.norm(step_xyz - (step_xyz @ normal) * normal))
    if shift_mm > tolerance_mm:
        angle = np.degrees(np.arctan2(shift_mm, spacing_mm))
        raise DataError(f"{where}: gantry tilt of {angle:.1f} degrees (each slice shifted {shift_mm:.3f} mm in its "
                        "plane); luna needs slices stacked along their normal, so resample the series first")
    return headers


def read_series(folder: Path, series_uid: str | None = None) -> tuple[sitk.Image, str]:
    """Check and read one DICOM series of ``folder`` as a 3-D image in HU.

    Args:
        folder: a folder holding the series' files (see the module docstring for which files).
        series_uid: the series to read; None reads the folder's only series.

    Returns:
        ``(image, series_uid)``: the slices stacked in order along their normal, with the
        rescale slope and intercept applied (HU), and the SeriesInstanceUID read.

    Raises:
        DataError: one line naming the folder (and file) for an empty folder, an unreadable
            file, several series and no ``series_uid``, a modality other than CT, and every
            case of :func:`order_slices`.
    """
    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        what = "is an empty folder" if not any(folder.iterdir()) else \
            "holds no DICOM files (*.dcm, or files starting with the DICOM preamble)"
        raise DataError(f"{folder} {what}; expected a scan file or a DICOM series folder")
    series = list_series(folder)
    in_series = {p.name for paths in series.values() for p in paths}
    # A file GDCM skipped would be a slice missing without a word (DICOMDIR is an index, not a slice).
    unreadable = [p for p in files if p.name not in in_series and p.name.upper() != "DICOMDIR"]
    if unreadable:
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise DataError(f"{unreadable[0]}: unreadable DICOM file, part of no series{more}")
    series_uid = pick_series(folder, series, series_uid)
    where = f"{folder}: series {series_uid}"
    headers = [read_slice_header(folder / p.name) for p in series[series_uid]]
    check_modality(where, headers)
    ordered = order_slices(where, headers)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(h.path) for h in ordered])
    try:
        with _itk_warnings_off():
            image = reader.Execute()
    except RuntimeError as exc:
        raise DataError(f"{where}: SimpleITK cannot read it: {library_reason(exc)}") from None
    return image, series_uid

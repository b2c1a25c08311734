"""Writing a scan (a 3-D HU image with its geometry) as MetaImage, NIfTI or a DICOM series.

``luna synth --format`` uses these so that every reader of :mod:`luna.io` can be tested on the
same scan in each format. MetaImage and NIfTI are SimpleITK's own writers. A DICOM series is one
file per slice, written as real CT series are: int16 values stored as HU + 1024 with
RescaleIntercept -1024 and RescaleSlope 1 (so a reader that ignores the rescale is visibly
wrong), each slice's ImagePositionPatient from the volume's origin and direction, and UIDs and
dates derived from the series uid, so the same scan gives the same bytes.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SCAN_FORMATS = ("mhd", "nifti", "dicom")
# Stored DICOM value = HU - intercept: air (-1000 HU) is stored as 24, as on many scanners.
DICOM_RESCALE_INTERCEPT = -1024
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"   # the SOP class of a CT slice


def scan_name(series_uid: str, scan_format: str) -> str:
    """The file (or, for DICOM, folder) name a scan of ``series_uid`` is written under."""
    names = {"mhd": f"{series_uid}.mhd", "nifti": f"{series_uid}.nii.gz", "dicom": series_uid}
    if scan_format not in names:
        raise ValueError(f"unknown scan format {scan_format!r}; expected one of {', '.join(SCAN_FORMATS)}")
    return names[scan_format]


def write_image(image: sitk.Image, path: Path, scan_format: str, series_uid: str) -> list[Path]:
    """Write a 3-D HU image; returns the files written.

    Args:
        image: int16 HU, with origin, spacing and direction.
        path: ``<name>.mhd`` (+ ``.raw`` beside it), ``<name>.nii`` / ``.nii.gz``, or the folder
            of a DICOM series (created; one ``NNNN.dcm`` per slice).
        scan_format: one of :data:`SCAN_FORMATS`.
        series_uid: the DICOM SeriesInstanceUID (the other formats are named by ``path``).
    """
    path = Path(path)
    if scan_format == "dicom":
        return write_dicom_series(image, path, series_uid)
    if scan_format not in SCAN_FORMATS:
        raise ValueError(f"unknown scan format {scan_format!r}; expected one of {', '.join(SCAN_FORMATS)}")
    sitk.WriteImage(image, str(path), useCompression=False)
    written = [path]
    if scan_format == "mhd":
        written.append(path.with_suffix(".raw"))
        if not written[1].is_file():
            raise OSError(f"SimpleITK wrote {path} without the expected {written[1].name}")
    return written


def _uid(series_uid: str, what: str) -> str:
    """A UID of the ``2.25`` (UUID) form, the same for the same series and purpose."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{series_uid}/{what}').int}"


def _ds(values) -> str:
    """A DICOM decimal string list (each value at most 16 characters)."""
    return "\\".join(f"{float(v):.6f}".rstrip("0").rstrip(".") or "0" for v in values)


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str) -> list[Path]:
    """One CT slice file per index of ``image`` (int16 HU) into ``folder``; returns the files."""
    hu = sitk.GetArrayViewFromImage(image)
    if hu.ndim != 3 or hu.min() - DICOM_RESCALE_INTERCEPT < np.iinfo(np.int16).min \
            or hu.max() - DICOM_RESCALE_INTERCEPT > np.iinfo(np.int16).max:
        raise ValueError("a DICOM series is written from a 3-D image whose HU fit int16 after the rescale")
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin_xyz = np.array(image.GetOrigin())
    spacing_xyz = image.GetSpacing()
    shared = {
        "0008|0016": CT_IMAGE_STORAGE, "0008|0060": "CT",
        "0008|0020": "20000101", "0008|0030": "000000",   # fixed: GDCM would write the time of day
        "0008|103e": "luna synthetic phantom",
        "0020|000d": _uid(series_uid, "study"), "0020|000e": series_uid,
        "0020|0052": _uid(series_uid, "frame of reference"),
        # Row direction (along a row, i.e. the column index), then column direction.
        "0020|0037": _ds([*direction[:, 0], *direction[:, 1]]),
        "0018|0050": _ds([spacing_xyz[2]]),
        "0028|1052": str(DICOM_RESCALE_INTERCEPT), "0028|1053": "1", "0028|1054": "HU",
    }
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()   # else GDCM makes up new UIDs, and each slice a series of its own
    digits = max(4, len(str(hu.shape[0])))
    written = []
    for index in range(hu.shape[0]):
        plane = sitk.GetImageFromArray(np.ascontiguousarray(hu[index]))
        plane.SetSpacing(spacing_xyz[:2])
        position_xyz = origin_xyz + direction[:, 2] * index * spacing_xyz[2]
        # GDCM takes the position, orientation and rescale from these tags: a 2-D image has no z.
        tags = shared | {"0008|0018": _uid(series_uid, f"slice {index}"), "0020|0013": str(index + 1),
                         "0020|0032": _ds(position_xyz)}
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        path = folder / f"{index + 1:0{digits}d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(plane)
        written.append(path)
    return written

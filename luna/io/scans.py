"""Finding the scans of a data dir: series uid -> file or DICOM folder, never a path built from a uid.

A scan is a file SimpleITK reads (``.mhd`` + ``.raw``, ``.mha``, ``.nii``, ``.nii.gz``,
``.nrrd``), known by its file name without the extension, or a DICOM series, known by its
SeriesInstanceUID and found in a folder holding DICOM files (see :mod:`luna.io.dicom`). A
folder of several series gives one scan per series, all with that folder as their path: the
uid picks the series when it is read (``Ct(folder, uid)``).
"""
from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
from pathlib import Path

from luna.errors import DataError
from luna.io.dicom import dicom_files, is_dicom_file, list_series
from luna.io.metaimage import data_file
from luna.luna16.csvfiles import is_valid_series_uid

log = logging.getLogger(__name__)

# The folders LUNA16 ships its scans in: subset0 .. subset9.
SUBSET_DIR = re.compile(r"subset(\d+)", re.IGNORECASE)
# Folders of a LUNA16 download that hold no scans but files named like them: seg-lungs-LUNA16
# has a lung mask per scan, <uid>.mhd + .zraw, and sorts before subset0, so its masks would be
# found first and cropped in place of the CTs. Matched in lower case.
NOT_SCAN_DIRS = frozenset({"seg-lungs-luna16"})
# Longest first: ".nii.gz" must win over a bare ".gz".
SCAN_SUFFIXES = (".nii.gz", ".mhd", ".mha", ".nii", ".nrrd")
SCAN_KINDS = ".mhd, .mha, .nii, .nii.gz, .nrrd or a DICOM series folder"


def scan_suffix(path: Path) -> str | None:
    """The scan extension ``path`` ends with (lower case), or None when it is no scan file."""
    name = Path(path).name.lower()
    return next((s for s in SCAN_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def scan_uid(path: Path) -> str:
    """The uid of a scan file: its name without the extension (both parts of ``.nii.gz``)."""
    path = Path(path)
    suffix = scan_suffix(path)
    return path.name[:-len(suffix)] if suffix else path.name


def scan_files(scan_path: Path) -> list[Path]:
    """The files a scan is read from: a ``.mhd`` header and the data file it names (``.raw``,
    ``.zraw``, any name; none when the data is inline), the one file, or the DICOM files of a
    folder (all of them: which belong to which series is for GDCM to say, at a cost)."""
    scan_path = Path(scan_path)
    if scan_path.is_dir():
        return dicom_files(scan_path)
    if scan_suffix(scan_path) == ".mhd":
        raw_path = data_file(scan_path)
        return [scan_path] if raw_path is None else [scan_path, raw_path]
    return [scan_path]


@lru_cache(maxsize=4096)
def _series_uids(folder: str, _mtime_ns: int, _n_names: int) -> tuple[str, ...]:
    # GDCM parses every file's header: once per folder as long as no file is added or removed
    # (either changes the folder's mtime or its number of names).
    return tuple(list_series(Path(folder)))


def _holds_dicom(folder: Path, names: list[str]) -> bool:
    return any(scan_suffix(Path(name)) is None and is_dicom_file(folder / name) for name in names)


def find_series_files(data_dir: Path) -> dict[str, Path]:
    """Map series uid -> scan path for every scan under ``data_dir`` (any depth).

    Scan files map to themselves; every DICOM series maps to the folder holding it. A name
    that is not a plain uid, or a uid seen twice, is skipped with a warning. LUNA16's lung masks
    (``seg-lungs-LUNA16/``, named like the scans) are not scans and are not looked at.

    Raises:
        DataError: the directory is missing, a folder under it cannot be read (permission
            denied), or it holds no scan.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        what = "is a file, not a directory" if data_dir.exists() else "does not exist"
        raise DataError(f"data dir {data_dir} {what}")
    found: dict[str, Path] = {}

    def add(uid: str, path: Path) -> None:
        if not is_valid_series_uid(uid):
            log.warning("Ignoring %s: its series uid %r is not a plain uid", path, uid)
        elif uid in found:
            log.warning("Series %s is on disk twice (%s, %s); using the first", uid, found[uid], path)
        else:
            found[uid] = path

    def fail(exc: OSError) -> None:
        # A folder that cannot be read is an error, not a silent gap: another user's private
        # subset would otherwise read as "no scans found".
        reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
        raise DataError(f"data dir {data_dir}: cannot read {exc.filename}: {reason}")

    for root, dirs, names in os.walk(data_dir, onerror=fail):
        dirs[:] = sorted(name for name in dirs if name.lower() not in NOT_SCAN_DIRS)
        folder = Path(root)
        for name in sorted(names):
            if scan_suffix(Path(name)):
                add(scan_uid(Path(name)), folder / name)
        if _holds_dicom(folder, names):
            for uid in _series_uids(str(folder.resolve()), folder.stat().st_mtime_ns, len(names)):
                add(uid, folder)
    if not found:
        raise DataError(f"no scans found under data dir {data_dir} (expected .mhd, .mha, .nii, .nii.gz or .nrrd "
                        "files, or DICOM series folders, such as subset*/<uid>.mhd)")
    return found


def series_subsets(data_dir: Path) -> dict[str, int]:
    """Map series uid -> the number of the ``subsetK`` folder its scan lies in under ``data_dir``
    (the innermost one, so an unpacked ``subset0/subset0/`` works too).

    Raises:
        DataError: as :func:`find_series_files`, or a scan that lies in no ``subsetK`` folder.
    """
    data_dir = Path(data_dir)
    subsets: dict[str, int] = {}
    for uid, path in find_series_files(data_dir).items():
        # A DICOM series is its folder, which may itself be called subsetK.
        parts = path.relative_to(data_dir).parts
        numbers = [int(m.group(1)) for part in (parts if path.is_dir() else parts[:-1])
                   if (m := SUBSET_DIR.fullmatch(part))]
        if not numbers:
            raise DataError(f"{path}: not in a subsetK folder of {data_dir}; cross-validation by subset needs "
                            "the LUNA16 layout (subset0 .. subset9/<uid>.mhd, or a series folder inside one)")
        subsets[uid] = numbers[-1]
    return subsets

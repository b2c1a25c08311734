"""Finding the scans of a data dir: series uid -> file, without ever building a path from a uid."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from luna.errors import DataError
from luna.luna16.csvfiles import is_valid_series_uid

log = logging.getLogger(__name__)

# The folders LUNA16 ships its scans in: subset0 .. subset9.
SUBSET_DIR = re.compile(r"subset(\d+)", re.IGNORECASE)


def find_series_files(data_dir: Path) -> dict[str, Path]:
    """Map series uid -> ``.mhd`` path for every scan under ``data_dir`` (any depth).

    Raises:
        DataError: the directory is missing, a folder under it cannot be read (permission denied),
            or it holds no ``.mhd`` file.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        what = "is a file, not a directory" if data_dir.exists() else "does not exist"
        raise DataError(f"data dir {data_dir} {what}")
    found: dict[str, Path] = {}
    for path in _mhd_files(data_dir):
        uid = path.stem
        if not is_valid_series_uid(uid):
            log.warning("Ignoring %s: its name is not a plain series uid", path)
            continue
        if uid in found:
            log.warning("Series %s is on disk twice (%s, %s); using the first", uid, found[uid], path)
            continue
        found[uid] = path
    if not found:
        raise DataError(f"no .mhd scans found under data dir {data_dir} (expected subset*/<uid>.mhd)")
    return found


def _mhd_files(data_dir: Path) -> list[Path]:
    """Every ``.mhd`` under ``data_dir``, sorted. A folder that cannot be read is an error, not a
    silent gap: another user's private subset would otherwise read as "no scans found"."""
    def fail(exc: OSError) -> None:
        reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
        raise DataError(f"data dir {data_dir}: cannot read {exc.filename}: {reason}")

    return sorted(Path(folder) / name for folder, _, names in os.walk(data_dir, onerror=fail)
                  for name in names if name.endswith(".mhd"))


def series_subsets(data_dir: Path) -> dict[str, int]:
    """Map series uid -> the number of the ``subsetK`` folder its ``.mhd`` lies in under ``data_dir``
    (the innermost one, so an unpacked ``subset0/subset0/`` works too).

    Raises:
        DataError: as :func:`find_series_files`, or a scan that lies in no ``subsetK`` folder.
    """
    data_dir = Path(data_dir)
    subsets: dict[str, int] = {}
    for uid, path in find_series_files(data_dir).items():
        numbers = [int(m.group(1)) for part in path.relative_to(data_dir).parts[:-1]
                   if (m := SUBSET_DIR.fullmatch(part))]
        if not numbers:
            raise DataError(f"{path}: not in a subsetK folder of {data_dir}; cross-validation by subset needs "
                            "the LUNA16 layout (subset0 .. subset9/<uid>.mhd)")
        subsets[uid] = numbers[-1]
    return subsets

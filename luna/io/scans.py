"""Finding the scans of a data dir: series uid -> file, without ever building a path from a uid."""
from __future__ import annotations

import logging
from pathlib import Path

from luna.errors import DataError
from luna.luna16.csvfiles import is_valid_series_uid

log = logging.getLogger(__name__)


def find_series_files(data_dir: Path) -> dict[str, Path]:
    """Map series uid -> ``.mhd`` path for every scan under ``data_dir`` (any depth).

    Raises:
        DataError: the directory is missing or holds no ``.mhd`` file.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        what = "is a file, not a directory" if data_dir.exists() else "does not exist"
        raise DataError(f"data dir {data_dir} {what}")
    found: dict[str, Path] = {}
    for path in sorted(data_dir.rglob("*.mhd")):
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

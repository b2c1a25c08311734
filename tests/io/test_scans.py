"""Finding the scans of a data dir (a folder that cannot be read is named, not skipped), and the
subset each lies in."""
import errno
import os

import numpy as np
import pytest

from luna.errors import DataError
from luna.io.scans import find_series_files, series_subsets
from tests.conftest import write_scan


def test_finds_scans_at_any_depth(tiny_luna):
    found = find_series_files(tiny_luna["root"])
    assert sorted(found) == sorted(tiny_luna["uids"])
    assert all(path.suffix == ".mhd" and path.is_file() for path in found.values())


def test_an_unreadable_subset_is_permission_denied_not_no_scans(tiny_luna, monkeypatch):
    # Running as root, chmod cannot take the permission away: let the listing fail instead.
    blocked = tiny_luna["root"] / "subset1"
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(blocked):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=f"cannot read {blocked}: permission denied"):
        find_series_files(tiny_luna["root"])


def test_an_unreadable_subset_for_real(tiny_luna):
    blocked = tiny_luna["root"] / "subset1"
    blocked.chmod(0o000)
    try:
        if os.access(blocked, os.R_OK):
            pytest.skip("running as root: chmod does not take read permission away")
        with pytest.raises(DataError, match="permission denied"):
            find_series_files(tiny_luna["root"])
    finally:
        blocked.chmod(0o755)


def _scan(path):
    return write_scan(path, np.zeros((2, 3, 4), dtype=np.int16))


def test_subset_of_each_scan_is_its_innermost_subset_folder(tmp_path):
    _scan(tmp_path / "subset0" / "1.2.10.mhd")
    _scan(tmp_path / "subset7" / "subset7" / "1.2.17.mhd")  # as some unpacked downloads nest them
    _scan(tmp_path / "Subset3" / "extra" / "1.2.13.mhd")
    assert series_subsets(tmp_path) == {"1.2.10": 0, "1.2.17": 7, "1.2.13": 3}


def test_a_scan_outside_the_subset_folders_is_named(tmp_path):
    _scan(tmp_path / "subset0" / "1.2.10.mhd")
    _scan(tmp_path / "loose" / "1.2.11.mhd")
    with pytest.raises(DataError, match=r"loose/1\.2\.11\.mhd: not in a subsetK folder"):
        series_subsets(tmp_path)

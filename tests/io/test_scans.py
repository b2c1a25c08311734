"""Finding the scans of a data dir: a folder that cannot be read is named, not skipped."""
import errno
import os

import pytest

from luna.errors import DataError
from luna.io.scans import find_series_files


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

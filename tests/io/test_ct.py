"""Tests for luna.io: reading a MetaImage scan, its geometry and the header checks."""
import numpy as np
import pytest

from luna.errors import DataError
from luna.io.ct import Ct
from luna.io.metaimage import read_mhd_header
from tests.conftest import write_scan


def test_ct_clips_and_keeps_geometry(scan):
    path, volume = scan
    ct = Ct(path)
    assert ct.series_uid == "1.2.3" and ct.hu_a.dtype == np.int16 and ct.hu_a.shape == (20, 30, 40)
    np.testing.assert_array_equal(ct.hu_a, np.clip(volume, -1000, 1000))
    assert ct.origin_xyz == (-10.0, -20.0, -30.0)
    np.testing.assert_allclose(ct.spacing_xyz, (0.7, 0.8, 2.0))
    np.testing.assert_array_equal(ct.direction, np.diag([1.0, -1.0, 1.0]))


def test_centre_outside_the_scan_is_an_error(scan):
    ct = Ct(scan[0])
    with pytest.raises(DataError, match="outside the scan"):
        ct.center_irc_checked(ct.irc2xyz((25, 15, 20)))


def test_raw_missing(scan):
    path, _ = scan
    path.with_suffix(".raw").unlink()
    with pytest.raises(DataError, match="data file 1.2.3.raw is missing"):
        Ct(path)


def test_raw_truncated(scan):
    path, _ = scan
    raw = path.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated, 1000 bytes"):
        Ct(path)


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("NDims = 3", "NDims = 2"), "must be 3-D"),
    (lambda t: t.replace("ElementType = MET_SHORT", "ElementType = MET_BOGUS"), "unsupported ElementType"),
    (lambda t: t.replace("DimSize = 40 30 20", "DimSize = 40 x 20"), "DimSize is not three integers"),
    (lambda t: t.replace("DimSize = 40 30 20", "DimSize = 40 30 2000"), "truncated"),
    (lambda t: "\n".join(l for l in t.splitlines() if not l.startswith("DimSize")), "no DimSize line"),
])
def test_malformed_headers(scan, edit, message):
    path, _ = scan
    path.write_text(edit(path.read_text()))
    with pytest.raises(DataError, match=message) as info:
        read_mhd_header(path)
    assert path.stem in str(info.value)


def test_binary_garbage_header(tmp_path):
    path = tmp_path / "1.2.mhd"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(DataError, match="not a MetaImage text header"):
        Ct(path)

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from luna.data.crops import crop_candidate

import luna.data.crops
from luna.data.cache import CropCache, centers_digest, source_stamp
from luna.data.candidates import get_candidate_info_list
from luna.io.scans import find_series_files
from luna.data.crops import CropConfig
from luna.io.ct import Ct
from luna.io.writers import write_image


@pytest.fixture
def scan_and_centers(tiny_luna):
    root = tiny_luna["root"]
    uid = tiny_luna["uids"][1]
    path = find_series_files(root)[uid]
    centers = [tuple(c.center_xyz) for c in get_candidate_info_list(root) if c.series_uid == uid]
    return uid, path, centers


def test_entry_holds_exactly_the_fresh_int16_crops(tmp_path, scan_and_centers):
    uid, path, centers = scan_and_centers
    cache = CropCache(tmp_path / "cache")
    assert cache.ensure(uid, path, centers) is True
    assert cache.ensure(uid, path, centers) is False  # warm: nothing rebuilt
    crops, centers_irc = cache.open_entry(uid, path, centers)
    ct = Ct(path)
    for row, center_xyz in enumerate(centers):
        fresh, center_irc = crop_candidate(ct, center_xyz, (32, 48, 48))
        np.testing.assert_array_equal(crops[row], fresh)
        assert tuple(centers_irc[row]) == center_irc
    # The cache costs the int16 crops themselves (plus a .npy header of 128 bytes).
    npy = next((tmp_path / "cache").rglob("*.npy"))
    assert npy.stat().st_size == len(centers) * 32 * 48 * 48 * 2 + 128


def test_changed_scan_is_detected_and_recached(tmp_path, scan_and_centers):
    uid, path, centers = scan_and_centers
    cache = CropCache(tmp_path / "cache")
    cache.ensure(uid, path, centers)
    raw = path.with_suffix(".raw")
    data = bytearray(raw.read_bytes())
    data[:2] = (999).to_bytes(2, "little", signed=True)
    raw.write_bytes(bytes(data))
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))
    assert not cache.is_valid(uid, path, centers)
    assert cache.ensure(uid, path, centers) is True
    assert cache.is_valid(uid, path, centers)


def test_partial_entries_are_never_served(tmp_path, scan_and_centers):
    uid, path, centers = scan_and_centers
    cache = CropCache(tmp_path / "cache")
    cache.ensure(uid, path, centers)
    npy_path, json_path = cache.entry_paths(uid, centers_digest(centers))
    good = npy_path.read_bytes()
    # A torn .npy (killed mid-write without the atomic rename) does not match the marker.
    npy_path.write_bytes(good[: len(good) // 2])
    assert not cache.is_valid(uid, path, centers)
    crops, _ = CropCache(tmp_path / "cache").open_entry(uid, path, centers)  # rebuilt on read
    assert npy_path.read_bytes() == good and crops.shape[0] == len(centers)
    # No marker at all (killed between the two writes): rebuilt too.
    json_path.unlink()
    assert not cache.is_valid(uid, path, centers)
    json_path.write_text("{not json")
    assert not cache.is_valid(uid, path, centers)


def test_key_versioned_by_crop_config_and_format(tmp_path, scan_and_centers, monkeypatch):
    uid, path, centers = scan_and_centers
    CropCache(tmp_path / "cache").ensure(uid, path, centers)
    assert not CropCache(tmp_path / "cache", CropConfig(shape_irc=(16, 24, 24))).is_valid(uid, path, centers)
    assert not CropCache(tmp_path / "cache", CropConfig(hu_min=-900)).is_valid(uid, path, centers)
    assert not CropCache(tmp_path / "cache", CropConfig(edge="shift")).is_valid(uid, path, centers)
    assert not CropCache(tmp_path / "cache", CropConfig(voxel_mm=1.4)).is_valid(uid, path, centers)
    assert CropConfig(voxel_mm=1.25).key().endswith("-iso1.25mm") and "iso" not in CropConfig(voxel_mm=0).key()
    # Markers written before --crop-mm existed (the scan's own voxels) must keep matching.
    assert "voxel_mm" not in CropConfig(voxel_mm=0).as_dict() and CropConfig(voxel_mm=1.25).as_dict()["voxel_mm"] == 1.25
    with pytest.raises(ValueError, match="crop edge"):
        CropConfig(edge="wrap")
    with pytest.raises(ValueError, match="voxel size"):
        CropConfig(voxel_mm=0.01)
    monkeypatch.setattr(luna.data.crops, "CACHE_FORMAT_VERSION", luna.data.crops.CACHE_FORMAT_VERSION + 1)
    assert not CropCache(tmp_path / "cache").is_valid(uid, path, centers)


def test_other_candidate_set_gets_its_own_entry(tmp_path, scan_and_centers):
    uid, path, centers = scan_and_centers
    cache = CropCache(tmp_path / "cache")
    cache.ensure(uid, path, centers)
    assert not cache.is_valid(uid, path, centers[:-1])
    assert cache.ensure(uid, path, centers[:-1]) is True
    assert cache.is_valid(uid, path, centers)  # the first entry is untouched


def test_marker_is_json_and_nothing_is_pickled(tmp_path, scan_and_centers):
    uid, path, centers = scan_and_centers
    cache = CropCache(tmp_path / "cache")
    cache.ensure(uid, path, centers)
    npy_path, json_path = cache.entry_paths(uid, centers_digest(centers))
    meta = json.loads(json_path.read_text())
    assert meta["count"] == len(centers) and meta["series_uid"] == uid
    assert np.load(npy_path, allow_pickle=False).dtype == np.int16


def test_source_stamp_covers_every_file_of_a_scan(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    write_image(image, tmp_path / "a.nii.gz", "nifti", "a")
    write_image(image, tmp_path / "b.mhd", "mhd", "b")
    slices = write_image(image, tmp_path / "series", "dicom", "1.2.3")
    assert list(source_stamp(tmp_path / "a.nii.gz")) == ["a.nii.gz"]
    assert list(source_stamp(tmp_path / "b.mhd")) == ["b.mhd", "b.raw"]
    stamp = source_stamp(tmp_path / "series")
    assert sorted(stamp) == [p.name for p in slices]
    os.utime(slices[1], ns=(slices[1].stat().st_atime_ns, slices[1].stat().st_mtime_ns + 10**9))
    assert source_stamp(tmp_path / "series") != stamp

"""Tests for luna.io.scans: finding scans of every format in a data dir (an unreadable folder is
named, not skipped), their uids, their files and the subset each lies in."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from luna.errors import DataError
from luna.io.dicom import dicom_files
from luna.io.scans import find_series_files, scan_files, scan_suffix, scan_uid
from luna.io.writers import write_image
from luna.io.scans import series_subsets
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


MHD, NII, NIIGZ, NRRD, MHA = "1.2.1", "case-02", "1.2.3", "scan_4", "1.2.5"
DICOM_A, DICOM_B = "1.2.840.6", "1.2.840.7"


def small_image() -> sitk.Image:
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    image.SetSpacing((0.8, 0.8, 2.0))
    return image


@pytest.fixture
def mixed(tmp_path) -> Path:
    """A data dir holding one scan of each kind, and a folder of two DICOM series."""
    root = tmp_path / "data"
    (root / "subset0").mkdir(parents=True)
    image = small_image()
    for name in (f"{MHD}.mhd", f"{NII}.nii", f"{NIIGZ}.nii.gz", f"{NRRD}.nrrd", f"{MHA}.mha"):
        sitk.WriteImage(image, str(root / "subset0" / name))
    series = root / "subset1" / "patient7" / "study"
    write_image(image, series, "dicom", DICOM_A)
    for path in write_image(image, root / "other", "dicom", DICOM_B):
        shutil.move(path, series / f"b-{path.name}")
    (root / "other").rmdir()
    (root / "candidates.csv").write_text("seriesuid,coordX,coordY,coordZ,class\n")
    return root


def test_every_format_and_every_series_is_found(mixed):
    found = find_series_files(mixed)
    series = mixed / "subset1" / "patient7" / "study"
    assert found == {MHD: mixed / "subset0" / f"{MHD}.mhd", NII: mixed / "subset0" / f"{NII}.nii",
                     NIIGZ: mixed / "subset0" / f"{NIIGZ}.nii.gz", NRRD: mixed / "subset0" / f"{NRRD}.nrrd",
                     MHA: mixed / "subset0" / f"{MHA}.mha", DICOM_A: series, DICOM_B: series}


def test_a_new_series_in_a_known_folder_is_seen(mixed):
    series = mixed / "subset1" / "patient7" / "study"
    assert DICOM_A in find_series_files(mixed)
    for path in series.glob("[0-9]*.dcm"):
        path.unlink()
    found = find_series_files(mixed)
    assert DICOM_A not in found and DICOM_B in found


@pytest.mark.parametrize("name, suffix, uid", [
    ("1.2.3.mhd", ".mhd", "1.2.3"), ("a.b.nii.gz", ".nii.gz", "a.b"), ("X.NII.GZ", ".nii.gz", "X"),
    ("x.nii", ".nii", "x"), ("x.nrrd", ".nrrd", "x"), ("x.raw", None, "x.raw"), (".nii.gz", None, ".nii.gz"),
])
def test_uid_is_the_name_without_its_extension(name, suffix, uid):
    assert scan_suffix(Path(name)) == suffix
    assert scan_uid(Path("/d") / name) == uid


def test_scan_files(mixed):
    subset = mixed / "subset0"
    assert scan_files(subset / f"{MHD}.mhd") == [subset / f"{MHD}.mhd", subset / f"{MHD}.raw"]
    assert scan_files(subset / f"{NIIGZ}.nii.gz") == [subset / f"{NIIGZ}.nii.gz"]
    series = mixed / "subset1" / "patient7" / "study"
    assert scan_files(series) == dicom_files(series) and len(scan_files(series)) == 6


def test_scan_files_follow_the_header_to_its_data(scan):
    path, volume = scan
    assert scan_files(path) == [path, path.with_suffix(".raw")]
    compressed = path.with_name("4.5.mhd")
    sitk.WriteImage(sitk.ReadImage(str(path)), str(compressed), True)
    assert scan_files(compressed) == [compressed, path.with_name("4.5.zraw")]
    local = path.with_name("6.7.mhd")
    local.write_bytes(path.read_text().replace("1.2.3.raw", "LOCAL").encode() + volume.tobytes())
    assert scan_files(local) == [local]


def test_missing_empty_and_bad_names(tmp_path, caplog):
    with pytest.raises(DataError, match="does not exist"):
        find_series_files(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no scans found under data dir .*empty.*DICOM series folders"):
        find_series_files(tmp_path / "empty")
    sitk.WriteImage(small_image(), str(tmp_path / "empty" / "bad name.nii.gz"))
    sitk.WriteImage(small_image(), str(tmp_path / "empty" / "ok.nii.gz"))
    assert list(find_series_files(tmp_path / "empty")) == ["ok"]
    assert "not a plain uid" in caplog.text


def test_the_lung_masks_of_a_luna16_download_are_not_taken_for_its_scans(tiny_luna, caplog):
    # LUNA16 ships seg-lungs-LUNA16/<uid>.mhd + .zraw beside the subsets: a lung mask per scan,
    # named by the scan's uid. That folder sorts before subset0, so the masks were found first
    # and every crop was cut from a mask instead of the CT.
    root = tiny_luna["root"]
    masks = root / "seg-lungs-LUNA16"
    masks.mkdir()
    for uid, path in find_series_files(root).items():
        mask = sitk.Cast(sitk.ReadImage(str(path)) > 0, sitk.sitkUInt8) * 3
        sitk.WriteImage(mask, str(masks / f"{uid}.mhd"), useCompression=True)
    with caplog.at_level("WARNING", logger="luna.io.scans"):
        found = find_series_files(root)
    assert sorted(found) == sorted(tiny_luna["uids"])
    assert all(path.parent.name.startswith("subset") for path in found.values()), found
    assert not caplog.records, caplog.text
    assert set(series_subsets(root)) == set(tiny_luna["uids"])

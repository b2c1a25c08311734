"""Tests for luna.io.writers: each format reads back as the same scan; DICOM stores HU + 1024."""
from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk

from luna.io.ct import Ct
from luna.io.dicom import dicom_files
from luna.io.writers import DICOM_RESCALE_INTERCEPT, SCAN_FORMATS, scan_name, write_image

UID = "1.2.826.0.1.3680043.2.1125.42"


@pytest.fixture
def image() -> sitk.Image:
    """Random HU beyond the clip window, pixels that are not square, every axis reversed
    (a left-handed direction: a DICOM series cannot keep that axis order)."""
    rng = np.random.default_rng(3)
    hu = rng.integers(-3024, 3000, size=(6, 9, 11)).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetOrigin((101.25, -20.5, -300.125))
    image.SetSpacing((0.7, 0.85, 2.5))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, -1))
    return image


def world_hu(ct: Ct) -> dict[tuple[float, float, float], int]:
    """HU by world position (mm, rounded to 1e-3): what must not depend on the file."""
    return {tuple(np.round(ct.irc2xyz(irc), 3)): int(ct.hu_a[irc]) for irc in np.ndindex(ct.hu_a.shape)}


def test_each_format_reads_back_the_same_scan(image, tmp_path):
    written = {fmt: write_image(image, tmp_path / scan_name(UID, fmt), fmt, UID) for fmt in SCAN_FORMATS}
    assert [p.name for p in written["mhd"]] == [f"{UID}.mhd", f"{UID}.raw"]
    assert [p.name for p in written["nifti"]] == [f"{UID}.nii.gz"]
    assert len(written["dicom"]) == 6 and written["dicom"] == dicom_files(tmp_path / UID)
    cts = {fmt: Ct(tmp_path / scan_name(UID, fmt)) for fmt in SCAN_FORMATS}
    assert {ct.series_uid for ct in cts.values()} == {UID}
    reference = cts["mhd"]
    # Read in LPS order: every axis of the stored array comes back reversed.
    expected = np.clip(sitk.GetArrayFromImage(image)[::-1, ::-1, ::-1], -1000, 1000)
    np.testing.assert_array_equal(reference.hu_a, expected)
    np.testing.assert_allclose(reference.direction, np.eye(3))
    for fmt, ct in cts.items():
        np.testing.assert_array_equal(ct.hu_a, reference.hu_a, err_msg=fmt)
        np.testing.assert_allclose(ct.origin_xyz, reference.origin_xyz, atol=1e-3, err_msg=fmt)
        np.testing.assert_allclose(ct.spacing_xyz, image.GetSpacing(), atol=1e-5, err_msg=fmt)
        np.testing.assert_allclose(ct.direction, reference.direction, atol=1e-6, err_msg=fmt)
    assert world_hu(cts["dicom"]) == world_hu(reference)


def test_dicom_stores_hu_plus_1024_with_the_rescale_tags(image, tmp_path):
    folder = tmp_path / "series"
    files = write_image(image, folder, "dicom", UID)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(files[0]))
    reader.ReadImageInformation()
    tags = {key: reader.GetMetaData(key).strip() for key in reader.GetMetaDataKeys()}
    assert tags["0008|0060"] == "CT" and tags["0020|000e"] == UID
    assert tags["0028|1052"] == str(DICOM_RESCALE_INTERCEPT) and tags["0028|1053"] == "1"
    assert tags["0028|0103"] == "1"   # signed int16
    assert [float(v) for v in tags["0028|0030"].split("\\")] == [0.85, 0.7]   # row spacing (y) first
    assert float(tags["0018|0050"]) == 2.5
    # Slice 0 is the first of the volume: its position is the origin.
    np.testing.assert_allclose([float(v) for v in tags["0020|0032"].split("\\")], image.GetOrigin())
    # The pixel data, as stored, are the first slice's HU + 1024.
    hu0 = sitk.GetArrayViewFromImage(image)[0]
    stored = np.frombuffer(files[0].read_bytes()[-hu0.nbytes:], dtype="<i2").reshape(hu0.shape)
    np.testing.assert_array_equal(stored, hu0.astype(np.int32) - DICOM_RESCALE_INTERCEPT)


def test_same_scan_same_bytes(image, tmp_path):
    one = write_image(image, tmp_path / "a", "dicom", UID)
    two = write_image(image, tmp_path / "b", "dicom", UID)
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
    sops = set()
    for path in one:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        sops.add(reader.GetMetaData("0008|0018"))
    assert len(sops) == len(one)


def test_unknown_format(image, tmp_path):
    with pytest.raises(ValueError, match="unknown scan format"):
        write_image(image, tmp_path / "x.png", "png", UID)
    with pytest.raises(ValueError, match="unknown scan format"):
        scan_name(UID, "png")

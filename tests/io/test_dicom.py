"""Tests for luna.io.dicom: every fault of a DICOM folder is one line naming it, and a good series reads.

Each faulty folder is built from a tiny synthetic series written by ``luna.io.writers``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from luna.errors import DataError
from luna.io.ct import Ct
from luna.io.dicom import SERIES_FLAG, dicom_files, is_dicom_file, list_series, read_series
from luna.io.writers import write_dicom_series
from luna.synth.phantom import generate_scan, write_scan


@pytest.fixture(scope="module")
def series_dirs(tmp_path_factory) -> dict:
    """Two tiny phantom scans written as DICOM series (each once; tests copy them)."""
    root = tmp_path_factory.mktemp("dicom")
    scans = [generate_scan(0, index, "tiny") for index in (0, 2)]
    for scan in scans:
        write_scan(scan, root / scan.uid, "dicom")
    return {"root": root, "scans": scans, "dirs": [root / scan.uid for scan in scans]}


@pytest.fixture
def series(series_dirs, tmp_path) -> tuple[Path, object]:
    """A fresh copy of the first series, free to break."""
    folder = tmp_path / "series"
    shutil.copytree(series_dirs["dirs"][0], folder)
    return folder, series_dirs["scans"][0]


def one_line_error(folder: Path, series_uid: str | None = None) -> str:
    with pytest.raises(DataError) as info:
        Ct(folder, series_uid)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_good_series_reads_in_hu_with_its_uid(series):
    folder, scan = series
    image, uid = read_series(folder)
    assert uid == scan.uid and image.GetSize() == scan.hu.shape[::-1]
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), scan.hu)
    ct = Ct(folder)
    assert ct.series_uid == scan.uid and ct.path == folder


def test_missing_slice_is_uneven_spacing(series):
    folder, _ = series
    files = dicom_files(folder)
    files[len(files) // 2].unlink()
    message = one_line_error(folder)
    assert str(folder) in message and "uneven slice positions" in message and "missing slice" in message


def test_duplicated_slice(series):
    folder, _ = series
    shutil.copy(folder / "0005.dcm", folder / "0005-copy.dcm")
    message = one_line_error(folder)
    assert "duplicated slice" in message and "0005" in message


def test_modality_other_than_ct(series):
    folder, _ = series
    path = folder / "0007.dcm"
    # (0008,0060) "CT" as GDCM writes it (implicit VR little endian: tag, 4-byte length), made MR.
    tag = b"\x08\x00\x60\x00\x02\x00\x00\x00"
    data = path.read_bytes()
    assert data.count(tag + b"CT") == 1
    path.write_bytes(data.replace(tag + b"CT", tag + b"MR"))
    message = one_line_error(folder)
    assert "modality MR" in message and "0007.dcm" in message and "not CT" in message


def test_two_series_in_one_folder_list_each_and_the_flag(series_dirs, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for k, source in enumerate(series_dirs["dirs"]):
        for path in dicom_files(source):
            shutil.copy(path, folder / f"s{k}-{path.name}")
    first, second = series_dirs["scans"]
    message = one_line_error(folder)
    assert "holds 2 DICOM series: " in message and f"pick one with {SERIES_FLAG} UID" in message
    for scan in (first, second):
        assert f"{scan.uid} ({scan.hu.shape[0]} slices)" in message
    # The uid picks one; the other series' files do not get in.
    ct = Ct(folder, second.uid)
    assert ct.series_uid == second.uid and ct.hu_a.shape[0] == second.hu.shape[0]
    assert sorted(list_series(folder)) == sorted([first.uid, second.uid])
    assert "no DICOM series 1.2.3 in this folder" in one_line_error(folder, "1.2.3")


def test_a_single_2d_image_is_not_a_volume(series, tmp_path):
    folder, _ = series
    alone = tmp_path / "localizer"
    alone.mkdir()
    shutil.copy(folder / "0003.dcm", alone / "0003.dcm")
    message = one_line_error(alone)
    assert "single 2-D image (0003.dcm)" in message and str(alone) in message


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "is an empty folder" in one_line_error(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no scans here")
    assert "holds no DICOM files" in one_line_error(tmp_path / "notes")


@pytest.mark.parametrize("alone", [True, False])
def test_garbage_dcm_is_named(series, tmp_path, alone):
    folder, _ = series
    if alone:
        folder = tmp_path / "garbage"
        folder.mkdir()
    (folder / "0005x.dcm").write_bytes(b"not a DICOM file at all" * 20)
    message = one_line_error(folder)
    assert message.startswith(str(folder / "0005x.dcm")) and "unreadable DICOM file" in message


def test_truncated_slice_is_unreadable(series):
    folder, _ = series
    path = folder / "0010.dcm"
    path.write_bytes(path.read_bytes()[:200])
    assert "0010.dcm: unreadable DICOM file" in one_line_error(folder)


def test_gantry_tilt(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((5, 8, 8), np.int16))
    tilt = np.radians(15)
    # The slices step along a direction 15 degrees off their normal.
    image.SetDirection((1, 0, 0, 0, 1, np.sin(tilt), 0, 0, np.cos(tilt)))
    write_dicom_series(image, tmp_path / "tilted", "1.2.3")
    assert "gantry tilt of 15.0 degrees" in one_line_error(tmp_path / "tilted")


def test_dicom_files_without_extension_are_found(series, tmp_path):
    folder, scan = series
    plain = tmp_path / "plain"
    plain.mkdir()
    for path in dicom_files(folder):
        shutil.copy(path, plain / f"IM{path.stem}")
    (plain / "notes.txt").write_text("not DICOM")
    assert not is_dicom_file(plain / "notes.txt")
    assert len(dicom_files(plain)) == scan.hu.shape[0]
    np.testing.assert_array_equal(Ct(plain).hu_a, Ct(folder).hu_a)


def test_slices_with_their_own_rescale_read_in_one_hu_scale(series_dirs, tmp_path, monkeypatch):
    # Scanners and converters may store each slice with its own intercept: HU must come through
    # each slice's rescale, not the first slice's for all.
    import luna.io.writers as writers

    scan = series_dirs["scans"][0]
    image = sitk.GetImageFromArray(scan.hu)
    image.SetSpacing(scan.spacing_xyz)
    image.SetOrigin(scan.origin_xyz)
    image.SetDirection(scan.direction)
    monkeypatch.setattr(writers, "DICOM_RESCALE_INTERCEPT", -1000)
    other = write_dicom_series(image, tmp_path / "other", scan.uid)
    mixed = tmp_path / "mixed"
    shutil.copytree(series_dirs["dirs"][0], mixed)
    for path in other[1::2]:
        shutil.copy(path, mixed / path.name)
    assert (mixed / other[1].name).read_bytes() != (series_dirs["dirs"][0] / other[1].name).read_bytes()
    np.testing.assert_array_equal(Ct(mixed).hu_a, Ct(series_dirs["dirs"][0]).hu_a)

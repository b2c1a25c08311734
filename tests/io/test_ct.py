"""Tests for luna.io.ct: reading a scan in LPS order, its geometry, and the MetaImage header checks."""
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from luna.errors import DataError
from luna.io.ct import Ct
from luna.io.metaimage import read_mhd_header
from luna.io.writers import SCAN_FORMATS
from luna.luna16.geometry import irc2xyz
from luna.synth.phantom import generate_scan, make_dataset
from tests.conftest import write_scan


def test_ct_clips_and_reads_in_lps_order(scan):
    path, volume = scan
    ct = Ct(path)
    assert ct.series_uid == "1.2.3" and ct.hu_a.dtype == np.int16 and ct.hu_a.shape == (20, 30, 40)
    # Stored with rows running toward the front (y flipped): read with rows toward the back.
    np.testing.assert_array_equal(ct.hu_a, np.clip(volume[:, ::-1, :], -1000, 1000))
    np.testing.assert_allclose(ct.origin_xyz, (-10.0, -20.0 - 29 * 0.8, -30.0))
    np.testing.assert_allclose(ct.spacing_xyz, (0.7, 0.8, 2.0))
    np.testing.assert_array_equal(ct.direction, np.eye(3))
    # The same world point holds the same voxel as in the file.
    assert ct.xyz2irc(irc2xyz((3, 4, 5), (-10.0, -20.0, -30.0), (0.7, 0.8, 2.0), np.diag([1, -1, 1]))) == (3, 25, 5)


def test_float_values_are_rounded_not_truncated(tmp_path):
    image = sitk.GetImageFromArray(np.full((2, 3, 4), 99.6, dtype=np.float32))
    sitk.WriteImage(image, str(tmp_path / "f.nrrd"))
    assert (Ct(tmp_path / "f.nrrd").hu_a == 100).all()


def test_not_a_scan(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes.txt: not a scan luna reads \(expected .mhd"):
        Ct(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="scan .*absent.nii.gz does not exist"):
        Ct(tmp_path / "absent.nii.gz")
    (tmp_path / "garbage.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="garbage.nii.gz: SimpleITK cannot read it"):
        Ct(tmp_path / "garbage.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4), np.int16)), str(tmp_path / "flat.nrrd"))
    with pytest.raises(DataError, match="flat.nrrd: a 2-D image"):
        Ct(tmp_path / "flat.nrrd")


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


def inline(path):
    """The scan at ``path`` rewritten as one file: its header, then its voxels (``LOCAL``)."""
    local = path.with_name("1.2.4.mhd")
    header = path.read_text().replace("ElementDataFile = 1.2.3.raw", "ElementDataFile = LOCAL")
    local.write_bytes(header.encode() + path.with_suffix(".raw").read_bytes())
    return local


def test_voxels_inline_after_the_header_read_as_from_a_raw_file(scan):
    path, _ = scan
    local = inline(path)
    assert read_mhd_header(local)["ElementDataFile"] == "LOCAL"
    np.testing.assert_array_equal(Ct(local).hu_a, Ct(path).hu_a)
    local.write_bytes(local.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"1.2.4.mhd: truncated, 47990 bytes of voxels after the header but it "
                                        r"needs 48000 \(40x30x20 MET_SHORT\)"):
        Ct(local)


def test_binary_garbage_header(tmp_path):
    path = tmp_path / "1.2.mhd"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(DataError, match="not a MetaImage text header"):
        Ct(path)


@pytest.fixture(scope="module")
def phantom_formats(tmp_path_factory) -> dict:
    """Two tiny phantom scans in each format; with seed 7 the second stores every axis reversed."""
    root = tmp_path_factory.mktemp("formats")
    return {fmt: make_dataset(root / fmt, n_series=2, seed=7, size="tiny", scan_format=fmt) for fmt in SCAN_FORMATS}


def assert_voxels_at_their_world_place(ct: Ct, scan) -> None:
    """Every voxel of the generated scan is found, with its HU, where its world position says."""
    irc = np.indices(scan.hu.shape).reshape(3, -1).T
    direction = np.asarray(scan.direction).reshape(3, 3)
    xyz = np.asarray(scan.origin_xyz) + (irc[:, ::-1] * scan.spacing_xyz) @ direction.T
    cri = np.linalg.solve(ct.direction, (xyz - ct.origin_xyz).T).T / ct.spacing_xyz
    ct_irc = np.rint(cri[:, ::-1]).astype(int)
    np.testing.assert_allclose(cri[:, ::-1], ct_irc, atol=1e-3)
    np.testing.assert_array_equal(ct.hu_a[tuple(ct_irc.T)], np.clip(scan.hu, -1000, 1000).reshape(-1))


def test_the_same_phantom_reads_the_same_in_every_format(phantom_formats):
    assert len({tuple(s.series_uids) for s in phantom_formats.values()}) == 1
    for index, uid in enumerate(phantom_formats["mhd"].series_uids):
        scan = generate_scan(7, index, "tiny")
        assert index == 0 or np.linalg.det(np.reshape(scan.direction, (3, 3))) < 0
        cts = {fmt: Ct(summary.scan_paths[index]) for fmt, summary in phantom_formats.items()}
        reference = cts["mhd"]
        for fmt, ct in cts.items():
            assert ct.series_uid == uid, fmt
            np.testing.assert_array_equal(ct.hu_a, reference.hu_a, err_msg=fmt)
            np.testing.assert_allclose(ct.origin_xyz, reference.origin_xyz, atol=1e-3, err_msg=fmt)
            np.testing.assert_allclose(ct.spacing_xyz, reference.spacing_xyz, atol=1e-5, err_msg=fmt)
            np.testing.assert_allclose(ct.direction, reference.direction, atol=1e-6, err_msg=fmt)
            assert_voxels_at_their_world_place(ct, scan)
            for nodule in scan.nodules:   # the CSVs' world coordinates land on the nodule
                assert ct.hu_a[ct.xyz2irc(nodule.center_xyz)] > -800, (fmt, nodule)


def test_a_scan_without_air_is_reported_as_perhaps_not_hu(scan, tmp_path, caplog):
    path, volume = scan
    with caplog.at_level("WARNING", logger="luna.io.ct"):
        Ct(path)
    assert not caplog.records
    # The scanner's stored values (air near 0) written as they are, without the rescale to HU.
    stored = write_scan(tmp_path / "9.9.mhd", np.clip(volume, -1000, 1000) + 1024, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    with caplog.at_level("WARNING", logger="luna.io.ct"):
        Ct(stored)
    assert len(caplog.records) == 1
    assert "9.9.mhd: its darkest voxels are at 24 or above" in caplog.records[0].getMessage()


def test_upper_case_extensions_read_like_lower_case(scan, tmp_path):
    path, _ = scan
    image = sitk.ReadImage(str(path))
    sitk.WriteImage(image, str(tmp_path / "4.5.nii.gz"))
    (tmp_path / "4.5.nii.gz").rename(tmp_path / "4.5.NII.GZ")
    upper = tmp_path / "6.7.MHD"
    upper.write_text(path.read_text().replace("ElementDataFile = 1.2.3.raw", "ElementDataFile = 6.7.RAW"))
    (tmp_path / "6.7.RAW").write_bytes(path.with_suffix(".raw").read_bytes())
    for other in (upper, tmp_path / "4.5.NII.GZ"):
        np.testing.assert_array_equal(Ct(other).hu_a, Ct(path).hu_a)


def test_a_reader_error_says_what_is_wrong_not_where_in_simpleitk(tmp_path):
    path = tmp_path / "short.nrrd"
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n")
    with pytest.raises(DataError) as info:
        Ct(path)
    message = str(info.value)
    assert message.startswith(f"{path}: SimpleITK cannot read it: ") and ".cxx" not in message, message


def test_a_short_mha_is_named_before_simpleitk_reads_it(scan, tmp_path):
    path, _ = scan
    mha = tmp_path / "8.9.mha"
    sitk.WriteImage(sitk.ReadImage(str(path)), str(mha))
    np.testing.assert_array_equal(Ct(mha).hu_a, Ct(path).hu_a)
    mha.write_bytes(mha.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"8.9.mha: truncated, 47900 bytes of voxels after the header"):
        Ct(mha)


def compressed(path, name="5.6", sized=True):
    """The scan at ``path`` rewritten by SimpleITK with ``CompressedData = True`` (a ``.zraw``);
    ``sized=False`` drops the ``CompressedDataSize`` line, as other tools' headers lack it."""
    zipped = path.with_name(f"{name}.mhd")
    sitk.WriteImage(sitk.ReadImage(str(path)), str(zipped), useCompression=True)
    if not sized:
        zipped.write_text("".join(line for line in zipped.read_text().splitlines(keepends=True)
                                  if not line.startswith("CompressedDataSize")))
    return zipped, zipped.with_suffix(".zraw")


@pytest.mark.parametrize("sized", [True, False])
def test_compressed_voxels_read_as_from_a_raw_file(scan, sized):
    path, _ = scan
    zipped, _ = compressed(path, sized=sized)
    np.testing.assert_array_equal(Ct(zipped).hu_a, Ct(path).hu_a)


@pytest.mark.parametrize("damage,message", [
    (lambda data: data[:len(data) // 2], "compressed voxels end early"),
    (lambda data: data[:2] + bytes(len(data) - 2), "compressed voxels are corrupt"),
    (lambda data: zlib.compress(b"\0" * 100), "compressed voxels decompress to 100 bytes but the header needs 48000"),
])
@pytest.mark.parametrize("sized", [True, False])
def test_a_damaged_zraw_is_named_not_read_as_garbage(scan, damage, message, sized):
    # SimpleITK only prints "Uncompress failed" and hands back a volume of garbage, or without a
    # CompressedDataSize line reads a short stream as a whole one.
    path, _ = scan
    zipped, zraw = compressed(path, sized=sized)
    zraw.write_bytes(damage(zraw.read_bytes()))
    with pytest.raises(DataError, match=f"5.6.zraw: {message}"):
        Ct(zipped)


def test_damaged_compressed_voxels_inline_after_the_header_are_named(scan):
    path, _ = scan
    zipped, zraw = compressed(path)
    header = zipped.read_text().replace(f"ElementDataFile = {zraw.name}", "ElementDataFile = LOCAL")
    zipped.write_bytes(header.encode() + zraw.read_bytes()[:-50])
    with pytest.raises(DataError, match="5.6.mhd: compressed voxels end early"):
        Ct(zipped)


def replace_line(text: str, key: str, line: str | None) -> str:
    """``text`` with the header line of ``key`` replaced by ``line`` (None: dropped)."""
    lines = [line if l.split("=")[0].strip() == key else l for l in text.splitlines()]
    return "\n".join(l for l in lines if l is not None) + "\n"


@pytest.mark.parametrize("key,line,message", [
    # SimpleITK reads a word as 0 and a short list as what it has, padded with 0: the scan would
    # lie elsewhere in the world, and every candidate be cropped at the wrong place, or called
    # outside the scan for no reason the message could give.
    ("Offset", "Offset = abc -20 -30", r"Offset is not 3 numbers: 'abc -20 -30'"),
    ("Offset", "Offset = -10 -20", r"Offset is not 3 numbers: '-10 -20'"),
    ("Offset", "Position = -10 -20 -30 4", r"Position is not 3 numbers: '-10 -20 -30 4'"),
    ("ElementSpacing", "ElementSpacing = 0.7 0.8", r"ElementSpacing is not 3 numbers: '0.7 0.8'"),
    ("ElementSpacing", "ElementSpacing = 0.7 nan 2", r"ElementSpacing is not 3 numbers: '0.7 nan 2'"),
    ("TransformMatrix", "TransformMatrix = 1 0 0 0 1 0", r"TransformMatrix is not 9 numbers: '1 0 0 0 1 0'"),
    ("TransformMatrix", "TransformMatrix = 1 0 0 0 -1 0 0 0 z", r"TransformMatrix is not 9 numbers"),
])
def test_geometry_fields_that_are_not_numbers_are_named(scan, key, line, message):
    path, _ = scan
    path.write_text(replace_line(path.read_text(), key, line))
    with pytest.raises(DataError, match=f"1.2.3.mhd: {message}"):
        Ct(path)


def test_a_header_without_spacing_or_origin_is_read_with_a_warning(scan, caplog):
    # Valid MetaImage (1 mm voxels, origin 0), but seldom what a CT meant: a scan read so would
    # put every crop in the wrong place without any step failing.
    path, volume = scan
    text = path.read_text()
    path.write_text(replace_line(replace_line(text, "ElementSpacing", None), "Offset", None))
    with caplog.at_level("WARNING", logger="luna.io.metaimage"):
        ct = Ct(path)
    assert ct.spacing_xyz == (1.0, 1.0, 1.0)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and "1.2.3.mhd: no ElementSpacing and no Offset" in messages[0], messages
    # ElementSize stands in for ElementSpacing, as it does for SimpleITK; Origin for Offset.
    path.write_text(text.replace("ElementSpacing =", "ElementSize =").replace("Offset =", "Origin ="))
    caplog.clear()
    with caplog.at_level("WARNING", logger="luna.io.metaimage"):
        ct = Ct(path)
    assert not caplog.records
    np.testing.assert_allclose(ct.spacing_xyz, (0.7, 0.8, 2.0))


def test_data_after_a_skipped_header_is_read_and_a_short_one_named(scan):
    # HeaderSize = N: the data file starts with N bytes of another header, then the voxels.
    path, _ = scan
    skipped = path.with_name("7.8.mhd")
    skipped.write_text(path.read_text().replace("ElementDataFile = 1.2.3.raw", "HeaderSize = 100\nElementDataFile = 7.8.raw"))
    raw = path.with_suffix(".raw").read_bytes()
    skipped.with_suffix(".raw").write_bytes(bytes(100) + raw)
    np.testing.assert_array_equal(Ct(skipped).hu_a, Ct(path).hu_a)
    skipped.with_suffix(".raw").write_bytes(raw)  # SimpleITK: "File cannot be read ... for reading."
    with pytest.raises(DataError, match=r"7.8.raw: truncated, 47900 bytes after the 100 bytes HeaderSize skips but "
                                        r"the header needs 48000"):
        Ct(skipped)

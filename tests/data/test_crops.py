"""Tests for luna.data.crops: the crop rules at the volume's edge and isotropic resampling."""
import numpy as np

from luna.data.crops import crop_bounds, crop_candidate, crop_volume, resample_volume
from luna.io.ct import Ct
from luna.luna16.geometry import irc2xyz
from tests.conftest import write_scan


def test_crop_is_centred_inside_and_shifted_at_borders_by_the_reference_rule(scan):
    path, volume = scan
    ct = Ct(path)
    clipped = np.clip(volume[:, ::-1], -1000, 1000)  # the file's rows run y-flipped; Ct reads LPS
    center_xyz = ct.irc2xyz((10, 15, 20))
    for edge in ("pad", "shift"):
        chunk, center_irc = crop_candidate(ct, center_xyz, (8, 10, 12), edge, voxel_mm=0)
        assert center_irc == (10, 15, 20)
        np.testing.assert_array_equal(chunk, clipped[6:14, 10:20, 14:26])
    # At the corner the reference's crop is shifted inside the volume, not padded.
    chunk, _ = crop_candidate(ct, ct.irc2xyz((0, 29, 39)), (8, 10, 12), "shift", voxel_mm=0)
    np.testing.assert_array_equal(chunk, clipped[0:8, 20:30, 28:40])


def test_padded_crop_keeps_the_candidate_at_its_centre(scan):
    path, volume = scan
    ct = Ct(path)
    clipped = np.clip(volume[:, ::-1], -1000, 1000)  # the file's rows run y-flipped; Ct reads LPS
    chunk, _ = crop_candidate(ct, ct.irc2xyz((0, 29, 39)), (8, 10, 12), voxel_mm=0)  # "pad" is the default
    assert chunk.shape == (8, 10, 12)
    # Voxel (0, 29, 39) sits at the crop's centre index (4, 5, 6); the rest of the volume
    # that fits lies before it, air beyond the volume's faces.
    np.testing.assert_array_equal(chunk[4:, :6, :7], clipped[0:4, 24:30, 33:40])
    assert (chunk[:4] == -1000).all() and (chunk[:, 6:] == -1000).all() and (chunk[:, :, 7:] == -1000).all()


def test_resampling_interpolates_linearly_on_the_new_grid():
    i, r, c = np.meshgrid(np.arange(6), np.arange(5), np.arange(4), indexing="ij")
    volume = (100 * i + 10 * r + c).astype(np.int16)
    # Voxels of 2 x 1 x 0.5 mm onto 1 mm cubes: I doubles, R stays, C halves; voxel 0 stays voxel 0.
    out = resample_volume(volume, (2.0, 1.0, 0.5), 1.0)
    assert out.dtype == np.int16 and out.shape == (11, 5, 2)
    oi, orr, oc = np.meshgrid(np.arange(11) / 2, np.arange(5), np.arange(2) * 2, indexing="ij")
    # A linear ramp is reproduced exactly by linear interpolation (then rounded to int16).
    np.testing.assert_array_equal(out, np.rint(100 * oi + 10 * orr + oc))
    # Already isotropic at that size: unchanged.
    np.testing.assert_array_equal(resample_volume(volume, (1.0, 1.0, 1.0), 1.0), volume)


def test_isotropic_crop_shows_a_ball_round_whatever_the_slice_thickness(tmp_path):
    # A 10 mm ball in a scan of 2.5 mm slices and 0.8 x 0.7 mm pixels, axis x flipped.
    spacing_xyz, origin_xyz = np.array([0.8, 0.7, 2.5]), np.array([-30.0, -20.0, -60.0])
    shape_irc = (40, 120, 100)
    center_irc = np.array([21.3, 55.6, 48.2])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape_irc], indexing="ij"), axis=-1)
    dist_mm = np.linalg.norm((grid - center_irc) * spacing_xyz[::-1], axis=-1)
    volume = np.where(dist_mm <= 5.0, 40, -900).astype(np.int16)
    path = write_scan(tmp_path / "ball.mhd", volume, tuple(origin_xyz), tuple(spacing_xyz), (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    ct = Ct(path)
    # The ball's world centre, from the geometry as written (irc2xyz rounds nothing).
    center_xyz = irc2xyz(center_irc, origin_xyz, spacing_xyz, (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    native, _ = crop_candidate(ct, center_xyz, (16, 24, 24), voxel_mm=0)
    crop, center_voxel = crop_candidate(ct, center_xyz, (16, 24, 24), voxel_mm=1.0)
    assert crop.shape == (16, 24, 24) and crop.dtype == np.int16
    assert center_voxel == ct.xyz2irc(center_xyz)  # still the voxel of the scan's own grid
    inside = crop > -430  # halfway between the ball and its surroundings
    # The ball's centre lands within a voxel (1 mm) of the crop's centre index (8, 12, 12)...
    centroid = np.argwhere(inside).mean(axis=0)
    np.testing.assert_allclose(centroid, (8, 12, 12), atol=1.0)
    # ...and it is round: ~10 voxels across on every axis (natively 4 slices and ~14 pixels).
    extents = [inside.any(axis=tuple(a for a in range(3) if a != k)).sum() for k in range(3)]
    assert all(9 <= e <= 11 for e in extents), extents
    native_extents = [(native > -430).any(axis=tuple(a for a in range(3) if a != k)).sum() for k in range(3)]
    assert native_extents[0] <= 5 and native_extents[1] >= 13


def test_crop_bounds_rule():
    assert crop_bounds(10, 8, 20) == (6, 14)
    assert crop_bounds(1, 8, 20) == (0, 8)
    assert crop_bounds(19, 8, 20) == (12, 20)


def test_volume_smaller_than_crop_is_padded_with_air():
    chunk = crop_volume(np.zeros((4, 50, 50), np.int16), (2, 25, 25), (32, 48, 48), "shift")
    assert chunk.shape == (32, 48, 48)
    assert (chunk[:4] == 0).all() and (chunk[4:] == -1000).all()
    chunk = crop_volume(np.zeros((4, 50, 50), np.int16), (2, 25, 25), (32, 48, 48), "pad")
    assert (chunk[14:18, 1:, 1:] == 0).all() and (chunk[:14] == -1000).all() and (chunk[18:] == -1000).all()



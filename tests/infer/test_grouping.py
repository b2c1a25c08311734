"""Grouping on hand-built probability maps: touching blobs split, specks dropped, centres in
world millimetres under any direction matrix."""
import numpy as np
import pytest

from luna.data.seg_grid import GridVolume
from luna.infer.grouping import equivalent_diameter_mm, group_candidates, split_components
from luna.luna16.geometry import XyzTuple

SPACING_XYZ = (1.0, 1.0, 2.0)


def _volume(shape=(20, 40, 40), direction=np.eye(3), hu=None) -> GridVolume:
    hu_a = np.full(shape, -850, dtype=np.int16) if hu is None else hu
    return GridVolume(hu_a, XyzTuple(-50.0, 20.0, -300.0), XyzTuple(*SPACING_XYZ), np.asarray(direction, float))


def _ball(shape, center_irc, radius_mm):
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    spacing_irc = SPACING_XYZ[::-1]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center_irc, spacing_irc)) <= radius_mm ** 2


def test_two_touching_blobs_are_split_and_keep_their_voxels():
    shape = (20, 40, 40)
    left, right = _ball(shape, (10, 20, 13), 5.0), _ball(shape, (10, 20, 25), 5.0)
    probability = np.zeros(shape, dtype=np.float32)
    probability[left | right] = 0.9
    probability[10, 20, 13:26] = 0.9  # a neck one voxel thick: one blob without the erosion
    from scipy import ndimage
    assert ndimage.label(probability > 0.5)[1] == 1
    labels, count = split_components(probability > 0.5)
    assert count == 2 and set(np.unique(labels[probability > 0.5])) == {1, 2}  # every marked voxel kept
    found = group_candidates(probability, _volume(shape))
    assert len(found) == 2
    centers = sorted(c.center_irc[2] for c in found)
    assert abs(centers[0] - 13) < 1.0 and abs(centers[1] - 25) < 1.0


def test_specks_are_dropped_and_a_small_blob_that_erosion_would_remove_is_kept():
    shape = (20, 40, 40)
    probability = np.zeros(shape, dtype=np.float32)
    probability[5, 5, 5] = probability[15, 30, 8] = 1.0  # single voxels: 2 mm^3 each, specks
    probability[10, 20:22, 20:22] = 0.8  # 2 x 2 pixels on one slice: 8 mm^3 (a 2.5 mm sphere)
    found = group_candidates(probability, _volume(shape))
    assert len(found) == 1
    assert found[0].n_voxels == 4 and found[0].center_irc == pytest.approx((10.0, 20.5, 20.5))
    assert found[0].diameter_mm == pytest.approx(equivalent_diameter_mm(8.0))
    assert group_candidates(np.zeros(shape, dtype=np.float32), _volume(shape)) == []


def test_centre_is_weighted_by_density_and_diameter_is_the_equivalent_sphere():
    shape = (20, 40, 40)
    ball = _ball(shape, (10, 20, 20), 6.0)
    hu = np.full(shape, -850, dtype=np.int16)
    hu[ball] = -500
    hu[ball & (np.arange(40)[None, None, :] >= 20)] = 500  # the half at higher columns is dense
    probability = ball.astype(np.float32)
    (found,) = group_candidates(probability, _volume(shape, hu=hu))
    weights = hu.astype(float) + 1001
    expected_c = (weights * ball * np.arange(40)[None, None, :]).sum() / (weights * ball).sum()
    assert found.center_irc[2] == pytest.approx(expected_c) and found.center_irc[2] > 21
    assert found.diameter_mm == pytest.approx(12.0, rel=0.1)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, 1.0, -1.0]),
                                       np.diag([-1.0, 1.0, -1.0]), np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1.0]])])
def test_centres_go_to_world_coordinates_through_the_direction_matrix(direction):
    shape = (20, 40, 40)
    probability = np.zeros(shape, dtype=np.float32)
    probability[_ball(shape, (6, 12, 30), 4.0)] = 0.9
    volume = _volume(shape, direction)
    (found,) = group_candidates(probability, volume)
    # x, y, z = origin + direction @ (column, row, index) * spacing, written out by hand.
    cri_mm = np.array([30 * SPACING_XYZ[0], 12 * SPACING_XYZ[1], 6 * SPACING_XYZ[2]])
    expected = np.array([-50.0, 20.0, -300.0]) + np.asarray(direction) @ cri_mm
    np.testing.assert_allclose(found.center_xyz, expected, atol=1e-6)

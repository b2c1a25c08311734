"""Masks from annotations against hand-built spheres."""
import numpy as np
import pytest

from luna.data.masks import MASK_HU, box_mask, nodule_mask, sphere_mask

SPACING_IRC = (2.0, 0.8, 0.8)  # anisotropic, like a CT: thick slices, fine pixels


def _ball(shape, center_irc, radius_mm, spacing_irc=SPACING_IRC):
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center_irc, spacing_irc))
    return dist2 <= radius_mm ** 2


def _lung(shape=(20, 60, 60)):
    return np.full(shape, -850, dtype=np.int16)


def test_sphere_mask_is_the_ball_of_the_annotated_diameter():
    hu = _lung()
    center = (10.0, 30.0, 28.0)
    ball = _ball(hu.shape, center, 6.0)
    hu[ball] = 40
    box, part = sphere_mask(hu, SPACING_IRC, center, 12.0)
    mask = np.zeros(hu.shape, dtype=bool)
    mask[box] = part
    np.testing.assert_array_equal(mask, ball)
    # Round in millimetres on anisotropic voxels: ~4/3 pi r^3 of volume.
    assert abs(mask.sum() * np.prod(SPACING_IRC) / (4 / 3 * np.pi * 6.0 ** 3) - 1) < 0.1


def test_a_vessel_touching_the_nodule_bleeds_into_the_box_rule_not_the_sphere():
    hu = _lung()
    center = (10.0, 30.0, 30.0)
    ball = _ball(hu.shape, center, 4.0)
    hu[ball] = 40
    hu[10, 29:32, :] = 40  # a vessel along the columns, through the nodule, to the scan's edge
    sphere = nodule_mask(hu, SPACING_IRC, np.array([center]), [8.0], "sphere")
    box = nodule_mask(hu, SPACING_IRC, np.array([center]), [8.0], "box")
    assert not (sphere & ~ball).any()
    # The walk runs along the vessel to the scan's edge (29 voxels each way: it is symmetric).
    assert box[10, 30, 1:].all() and (box & ~ball).sum() > 100


def test_box_rule_of_an_isolated_ball_is_the_ball_and_at_least_five_voxels_wide():
    hu = _lung()
    center = (10, 30, 30)
    ball = _ball(hu.shape, center, 5.0)
    hu[ball] = 40
    box, part = box_mask(hu, center)
    assert [s.stop - s.start >= 5 for s in box] == [True, True, True]
    mask = np.zeros(hu.shape, dtype=bool)
    mask[box] = part
    np.testing.assert_array_equal(mask, ball)


def test_only_dense_voxels_of_the_sphere_are_marked():
    hu = _lung()
    center = (10.0, 30.0, 30.0)
    hu[_ball(hu.shape, center, 3.0)] = 40  # a 6 mm nodule annotated as 12 mm
    mask = nodule_mask(hu, SPACING_IRC, np.array([center]), [12.0])
    np.testing.assert_array_equal(mask, hu > MASK_HU)


def test_a_nodule_fainter_than_the_threshold_keeps_its_inner_half():
    hu = _lung()
    center = (10.0, 30.0, 30.0)
    hu[_ball(hu.shape, center, 5.0)] = -760  # ground glass below -700 HU
    mask = nodule_mask(hu, SPACING_IRC, np.array([center]), [10.0])
    np.testing.assert_array_equal(mask, _ball(hu.shape, center, 2.5))


def test_several_nodules_and_one_at_the_edge():
    hu = _lung()
    centers = np.array([(10.0, 30.0, 30.0), (0.0, 2.0, 58.0)])
    for center in centers:
        hu[_ball(hu.shape, center, 4.0)] = 40
    mask = nodule_mask(hu, SPACING_IRC, centers, [8.0, 8.0])
    np.testing.assert_array_equal(mask, hu > MASK_HU)
    with pytest.raises(ValueError, match="mask rule"):
        nodule_mask(hu, SPACING_IRC, centers, [8.0, 8.0], "cube")

"""The segmentation grid: geometry kept through resampling, and the lung region."""
import numpy as np
import pytest

from luna.data.seg_grid import GridVolume, SegGrid, lung_region, to_grid
from luna.io.ct import Ct
from luna.luna16.geometry import XyzTuple, irc2xyz
from luna.synth import generate_scan
from tests.conftest import write_scan


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (1, 0, 0, 0, 1, 0, 0, 0, -1)])
def test_a_world_point_keeps_its_tissue_on_the_grid(tmp_path, direction):
    volume = np.full((30, 50, 60), -900, dtype=np.int16)
    volume[12:16, 20:26, 33:40] = 300  # a dense block off-centre
    path = write_scan(tmp_path / "1.2.3.mhd", volume, (-40.0, 10.0, -200.0), (0.7, 0.8, 2.5), direction)
    ct = Ct(path)
    # The block's centre in the world, from the geometry the file was written with (Ct reorders
    # the voxels of a flipped scan, so its own indices differ).
    center_xyz = irc2xyz((13.5, 22.5, 36.0), (-40.0, 10.0, -200.0), (0.7, 0.8, 2.5), direction)
    grid = to_grid(ct, SegGrid(1.25, 2.0))
    assert grid.spacing_xyz == pytest.approx((1.25, 1.25, 2.0)) and grid.origin_xyz == pytest.approx(ct.origin_xyz)
    irc = np.rint(grid.xyz2irc_float(center_xyz)).astype(int)
    assert grid.hu_a[tuple(irc)] > 200
    assert grid.irc2xyz(grid.xyz2irc_float(center_xyz)) == pytest.approx(center_xyz)
    # An axis already on the grid (within 1%) is left as it is; 0 keeps the scan's own spacing.
    same = to_grid(ct, SegGrid(0.0, 2.51))
    assert same.hu_a.shape == volume.shape and same.spacing_xyz == pytest.approx(ct.spacing_xyz)
    with pytest.raises(ValueError, match="pixel_mm"):
        SegGrid(0.1, 2.0)


def test_lung_region_holds_every_nodule_and_less_than_the_scan():
    scan = generate_scan(seed=3, index=0, size="tiny")
    volume = GridVolume(scan.hu, XyzTuple(*scan.origin_xyz), XyzTuple(*scan.spacing_xyz),
                        np.asarray(scan.direction, dtype=float).reshape(3, 3))
    region = lung_region(volume)
    sizes = [s.stop - s.start for s in region]
    assert np.prod(sizes) < 0.8 * scan.hu.size
    for nodule in scan.nodules:
        irc = volume.xyz2irc_float(nodule.center_xyz)
        assert all(s.start <= v < s.stop for s, v in zip(region, irc)), (nodule, region)


def test_without_a_body_the_region_is_the_whole_scan():
    volume = GridVolume(np.full((10, 20, 20), -1000, dtype=np.int16), XyzTuple(0, 0, 0), XyzTuple(1, 1, 2), np.eye(3))
    assert lung_region(volume) == (slice(0, 10), slice(0, 20), slice(0, 20))

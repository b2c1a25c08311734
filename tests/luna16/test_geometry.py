import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from luna.luna16.geometry import IrcTuple, XyzTuple, irc2xyz, xyz2irc, xyz2irc_float


def random_geometry(rng):
    direction = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
    if rng.random() < 0.5:
        direction = direction @ np.diag([1, 1, -1])  # improper: a flipped axis
    spacing = (rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9), rng.uniform(0.6, 2.5))
    origin = tuple(rng.uniform(-400, 100, 3))
    return origin, spacing, direction


@pytest.mark.parametrize("seed", range(20))
def test_irc_round_trip_is_exact_for_any_direction(seed):
    rng = np.random.default_rng(seed)
    origin, spacing, direction = random_geometry(rng)
    for _ in range(50):
        irc = IrcTuple(*(int(v) for v in rng.integers(0, 512, 3)))
        xyz = irc2xyz(irc, origin, spacing, direction)
        assert isinstance(xyz, XyzTuple)
        assert xyz2irc(xyz, origin, spacing, direction) == irc


@pytest.mark.parametrize("seed", range(5))
def test_xyz_round_trip_within_half_a_voxel(seed):
    rng = np.random.default_rng(100 + seed)
    origin, spacing, direction = random_geometry(rng)
    xyz = np.asarray(origin) + rng.uniform(-100, 100, 3)
    back = np.asarray(irc2xyz(xyz2irc(xyz, origin, spacing, direction), origin, spacing, direction))
    # The difference is under half a voxel along each of the scan's own axes.
    along_axes = np.abs(np.linalg.solve(direction, back - xyz)) / np.asarray(spacing)
    assert np.all(along_axes <= 0.5 + 1e-9)
    cont = xyz2irc_float(irc2xyz((3.25, 4.5, 7.75), origin, spacing, direction), origin, spacing, direction)
    np.testing.assert_allclose(cont, (3.25, 4.5, 7.75), atol=1e-9)


def test_known_values_with_anisotropic_spacing_and_flip():
    origin, spacing = (-100.0, -50.0, -300.0), (0.5, 0.75, 2.0)
    direction = np.diag([1.0, -1.0, -1.0])
    # cri = (10, 20, 30) -> xyz = origin + D @ (cri * spacing)
    assert irc2xyz((30, 20, 10), origin, spacing, direction) == XyzTuple(-95.0, -65.0, -360.0)
    assert xyz2irc((-95.0, -65.0, -360.0), origin, spacing, direction) == IrcTuple(30, 20, 10)

"""The blob detector on a hand-built chest: balls found at their centres and ranked above a vessel,
nothing outside the lungs, the same world centres under thick slices and flipped axes."""
import numpy as np
import pytest

from luna.infer.blobs import _suppress, find_blobs
from luna.io.ct import Ct
from tests.conftest import write_scan

# World (x, y, z) mm -> what is there. The body spans x, y in [-90, 90]; the lung cavity is the
# ellipsoid of half-axes LUNG_MM around the origin.
LUNG_MM = (70.0, 55.0, 45.0)
BALLS = {  # name: (centre xyz, diameter mm, HU)
    "small solid": ((-30.0, 10.0, 6.2), 4.0, 40),  # between two slices of 2.5 mm
    "large solid": ((25.0, -20.0, -10.0), 10.0, 40),
    "ground glass": ((20.0, 25.0, 15.0), 8.0, -450),
    "juxta-pleural": ((0.0, -55.0, 0.0), 8.0, 40),  # centred on the lung's wall
}
VESSEL = dict(y=-5.0, z=20.0, radius_mm=1.5)  # a vessel along x across the lung
OUTSIDE = ((80.0, 0.0, 0.0), 6.0)  # a bone-dense ball in the chest wall, 10 mm from the lung


def _chest(spacing_xyz, direction, seed=0):
    """The phantom sampled on a grid of ``spacing_xyz`` whose axes point along ``direction``."""
    extent = np.array([200.0, 220.0, 110.0])  # mm along x, y, z
    shape_xyz = np.floor(extent / np.asarray(spacing_xyz)).astype(int)
    signs = np.diag(np.asarray(direction, float).reshape(3, 3))
    origin = -signs * extent / 2
    axes = [origin[k] + signs[k] * spacing_xyz[k] * np.arange(shape_xyz[k]) for k in range(3)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    hu = np.full(z.shape, -1000.0)
    hu[(np.abs(x) < 90) & (np.abs(y) < 90)] = 40.0
    lung = (x / LUNG_MM[0]) ** 2 + (y / LUNG_MM[1]) ** 2 + (z / LUNG_MM[2]) ** 2 < 1
    hu[lung] = -850.0
    hu[lung & ((y - VESSEL["y"]) ** 2 + (z - VESSEL["z"]) ** 2 < VESSEL["radius_mm"] ** 2)] = 40.0
    for center, diameter, value in list(BALLS.values()) + [(OUTSIDE[0], OUTSIDE[1], 400)]:
        inside = (x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2 < (diameter / 2) ** 2
        hu[inside] = value
    hu += np.random.default_rng(seed).normal(0, 20, hu.shape)
    return np.rint(hu).astype(np.int16), tuple(origin)


def _blobs(tmp_path, spacing_xyz=(1.0, 1.0, 1.25), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), name="chest"):
    hu, origin = _chest(spacing_xyz, direction)
    path = write_scan(tmp_path / f"{name}.mhd", hu, origin, spacing_xyz, direction)
    return find_blobs(Ct(path))


def _nearest(blobs, center_xyz):
    distance = np.linalg.norm(np.array([b.center_xyz for b in blobs]) - center_xyz, axis=1)
    return int(distance.argmin()), float(distance.min())


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    return _blobs(tmp_path_factory.mktemp("blobs"))


def test_every_ball_has_a_blob_inside_it_ranked_above_the_vessel(found):
    responses = [b.blobness for b in found]
    assert responses == sorted(responses, reverse=True)
    on_vessel = [k for k, b in enumerate(found) if np.hypot(b.center_xyz[1] - VESSEL["y"], b.center_xyz[2] - VESSEL["z"]) < 3
                 and all(np.linalg.norm(np.subtract(b.center_xyz, c)) > 10 for c, _, _ in BALLS.values())]
    assert on_vessel, "the vessel gives blobs too (the classifier ranks them out)"
    for name, (center, diameter, _) in BALLS.items():
        rank, distance = _nearest(found, center)
        assert distance < diameter / 2, f"{name}: nearest blob {distance:.1f} mm from its centre"
        assert rank < min(on_vessel), f"{name} ranks below the vessel"


def test_the_radius_fits_the_ball(found):
    rank, _ = _nearest(found, BALLS["large solid"][0])
    assert 3.0 <= found[rank].radius_mm <= 7.0
    rank, _ = _nearest(found, BALLS["small solid"][0])
    assert found[rank].radius_mm <= 3.0


def test_nothing_outside_the_lungs(found):
    _, distance = _nearest(found, OUTSIDE[0])
    assert distance > 5


@pytest.mark.parametrize("spacing_xyz, direction", [((1.0, 1.0, 2.5), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                                                     ((0.7, 0.7, 1.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))])
def test_thick_slices_and_flipped_axes_find_the_same_centres(tmp_path, spacing_xyz, direction):
    blobs = _blobs(tmp_path, spacing_xyz, direction)
    for name, (center, diameter, _) in BALLS.items():
        _, distance = _nearest(blobs, center)
        assert distance < diameter / 2, f"{name} at {spacing_xyz}: nearest blob {distance:.1f} mm away"
    # Sub-voxel: a 4 mm ball between two thick slices is placed to better than half a slice.
    _, distance = _nearest(blobs, BALLS["small solid"][0])
    assert distance < 0.8


def test_a_scan_without_lungs_has_no_blobs(tmp_path):
    hu = np.full((20, 30, 30), 40, dtype=np.int16)
    assert find_blobs(Ct(write_scan(tmp_path / "solid.mhd", hu))) == []


def test_suppression_keeps_the_strongest_and_drops_what_lies_in_its_ball():
    centers = np.array([[0.0, 0, 0], [0, 0, 2.0], [0, 0, 6.0], [0, 0, 7.0]])
    radius = np.array([3.0, 1.0, 1.0, 1.0])
    response = np.array([5.0, 9.0, 4.0, 3.0])
    assert _suppress(centers, radius, response, 10) == [1, 0, 2]  # 1 drops nothing; 2 drops 3
    assert _suppress(centers, radius, response, 2) == [1, 0]

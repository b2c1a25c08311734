"""A scan -> blob-shaped candidates: a multi-scale Laplacian-of-Gaussian detector.

Why a second source of candidates beside the segmentation model: the U-Net works on a grid of
1.25 x 1.25 x 2 mm and trains for minutes, so the smallest nodules (3-5 mm), partial-volumed on
that grid, and the faint ground-glass ones are the ones it never marks. A nodule, whatever made
the scan, is a compact blob denser than the lung around it, and the scale-normalised Laplacian
of Gaussian, ``-sigma^2 * LoG(HU)``, peaks at the centre of a ball of radius ``r`` at
``sigma = r / sqrt(3)``, with a height that grows with the ball's contrast. It peaks on vessel
crossings, airway walls and the pleura too: this detector is built for recall and leaves the
ranking to the classifier (``luna detect`` scores every candidate and keeps the most probable).

How:

1. Two levels, each the scan resampled no finer than ``FINE_MM`` / ``COARSE_MM`` (the scan's
   own voxels where they are coarser): the small scales on the fine level, where a 3 mm nodule
   is still a few voxels across, the large ones on the coarse level, which costs an eighth.
2. On the coarse level, the lungs (:func:`luna.data.seg_grid.lung_air`) and the distance of
   every voxel from them; only their box is filtered, on both levels.
3. Per scale, the local maxima of the response (3 x 3 x 3) above ``MIN_RESPONSE`` HU, each moved
   to the top of the parabola through its neighbours (sub-voxel: a 3 mm nodule is hit only
   within 1.5 mm of its centre); a maximum counts when its ball reaches the lungs (a
   juxta-pleural nodule's centre lies outside the air, within its radius of it).
4. Greedy suppression across all scales, strongest first: a maximum inside the ball of a
   stronger one is the same blob seen at another scale, or a ripple on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from luna.data.crops import resample_volume
from luna.data.seg_grid import lung_air
from luna.io.ct import Ct
from luna.luna16.geometry import XyzTuple, irc2xyz

# Gaussian scales (mm): balls of radius sqrt(3) * sigma, 1.7-14 mm, nodules of 3-28 mm.
SCALES_MM = (1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8.0)
# Scales below this are filtered on the fine level.
FINE_SCALE_LIMIT_MM = 2.5
# The levels' voxels at their finest (mm): a sigma spans at least about one voxel at each.
FINE_MM = 0.75
COARSE_MM = 1.5
# The HU window filtered: bone and contrast above soft tissue would outshine every nodule.
HU_WINDOW = (-1000.0, 200.0)
# A maximum weaker than this (HU of scale-normalised response) is noise on the lung.
MIN_RESPONSE = 30.0
# How far (mm) beyond its radius a blob may be from the lungs' air and still count.
LUNG_GAP_MM = 2.0
# Blobs per scan at most, the most blob-like: the classifier scores them all.
MAX_BLOBS = 400


@dataclass(frozen=True)
class Blob:
    """One blob: its centre in world mm, the radius (mm) of the ball its scale fits, its blobness."""

    center_xyz: XyzTuple
    radius_mm: float
    blobness: float


@dataclass
class _Level:
    """The scan's box on one level's voxels: HU (float32, in ``HU_WINDOW`` once :func:`_windowed`), the
    voxel size, and where voxel (0, 0, 0) is."""

    hu_a: np.ndarray
    voxel_irc: np.ndarray
    offset_irc: np.ndarray  # the box's first voxel, in the level's voxels


def _level(ct: Ct, finest_mm: float, box_mm: tuple[np.ndarray, np.ndarray] | None) -> _Level:
    """The scan (or the box ``(low, high)`` of it, in mm from voxel 0) on voxels no finer than ``finest_mm``."""
    spacing_irc = np.asarray(ct.spacing_xyz[::-1], dtype=np.float64)
    voxel_irc = np.maximum(spacing_irc, finest_mm)
    if box_mm is None:
        low_src, high_src = np.zeros(3, dtype=int), np.array(ct.hu_a.shape)
    else:
        low_src = np.maximum(np.floor(box_mm[0] / spacing_irc).astype(int), 0)
        high_src = np.minimum(np.ceil(box_mm[1] / spacing_irc).astype(int) + 1, ct.hu_a.shape)
    # Start the box on a level voxel, so that level voxels keep their place on the whole scan.
    offset = np.ceil(low_src * spacing_irc / voxel_irc).astype(int)
    start_src = offset * voxel_irc / spacing_irc
    first = np.floor(start_src).astype(int)
    part = ct.hu_a[tuple(slice(int(a), int(b)) for a, b in zip(first, high_src))]
    if np.any(start_src != first):
        # The box starts between source voxels: shift it onto the level's grid first.
        part = ndimage.shift(part.astype(np.float32), first - start_src, order=1, mode="nearest")
    hu_a = part if np.array_equal(voxel_irc, spacing_irc) else resample_volume(part, spacing_irc, voxel_irc)
    return _Level(np.asarray(hu_a), voxel_irc, offset)


def _windowed(level: _Level) -> _Level:
    """The level with its HU clipped to ``HU_WINDOW`` as float32: done once, every scale filters it."""
    return _Level(np.clip(level.hu_a.astype(np.float32), *HU_WINDOW), level.voxel_irc, level.offset_irc)


def _maxima(level: _Level, sigma_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Sub-voxel positions (level voxels of the whole scan) and blobness of one scale's maxima.

    The volume is smoothed once; the Laplacian and, at the maxima only, the Hessian are finite
    differences of it. Blobness is the weakest of the three curvatures, scale-normalised: as high
    as the Laplacian's third on a ball, near zero on a vessel (one flat direction) or a wall (two).
    """
    smooth = ndimage.gaussian_filter(level.hu_a, sigma=sigma_mm / level.voxel_irc, mode="nearest")
    step2 = (level.voxel_irc ** 2).astype(np.float32)
    response = np.zeros_like(smooth)
    for axis in range(3):
        response -= ndimage.correlate1d(smooth, [1.0, -2.0, 1.0], axis=axis, mode="nearest") / step2[axis]
    response *= sigma_mm ** 2
    peak = ndimage.maximum_filter(response, size=3, mode="nearest")
    points = np.argwhere((response == peak) & (response > MIN_RESPONSE))
    inner = np.all((points > 0) & (points < np.array(response.shape) - 1), axis=1)
    points = points[inner]
    values = response[tuple(points.T)]
    hessian = _hessian(smooth, points, level.voxel_irc) * sigma_mm ** 2
    blobness = -np.linalg.eigvalsh(hessian)[:, -1]  # minus the largest (weakest negative) eigenvalue
    shift = np.zeros(points.shape, dtype=np.float64)
    for axis in range(3):
        before, after = points.copy(), points.copy()
        before[:, axis] -= 1
        after[:, axis] += 1
        a, b = response[tuple(before.T)], response[tuple(after.T)]
        curve = a - 2 * values + b
        safe = np.where(curve < 0, curve, -1.0)
        shift[:, axis] = np.where(curve < 0, np.clip(0.5 * (a - b) / safe, -0.5, 0.5), 0.0)
    return points + shift + level.offset_irc, blobness.astype(np.float64)


def _hessian(smooth: np.ndarray, points: np.ndarray, voxel_irc: np.ndarray) -> np.ndarray:
    """(N, 3, 3) second derivatives of ``smooth`` at interior voxels ``points``, by central differences."""
    def at(offset: tuple[int, int, int]) -> np.ndarray:
        return smooth[tuple((points + np.array(offset)).T)].astype(np.float64)

    hessian = np.zeros((len(points), 3, 3))
    centre = at((0, 0, 0))
    for i in range(3):
        unit_i = np.eye(3, dtype=int)[i]
        hessian[:, i, i] = (at(tuple(unit_i)) - 2 * centre + at(tuple(-unit_i))) / voxel_irc[i] ** 2
        for j in range(i + 1, 3):
            unit_j = np.eye(3, dtype=int)[j]
            cross = (at(tuple(unit_i + unit_j)) - at(tuple(unit_i - unit_j)) - at(tuple(unit_j - unit_i))
                     + at(tuple(-unit_i - unit_j))) / (4 * voxel_irc[i] * voxel_irc[j])
            hessian[:, i, j] = hessian[:, j, i] = cross
    return hessian


def find_blobs(ct: Ct, max_blobs: int = MAX_BLOBS) -> list[Blob]:
    """The blob candidates of one scan, strongest first (steps 1-4 of the module docstring)."""
    coarse = _level(ct, COARSE_MM, None)
    _, lungs = lung_air(coarse.hu_a, coarse.voxel_irc)
    if lungs is None:
        return []
    corners = np.argwhere(lungs)
    margin = np.ceil(max(SCALES_MM) * 2 / coarse.voxel_irc).astype(int)
    low = np.maximum(corners.min(axis=0) - margin, 0)
    high = np.minimum(corners.max(axis=0) + margin + 1, coarse.hu_a.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    distance_mm = ndimage.distance_transform_edt(~lungs[box], sampling=coarse.voxel_irc)
    coarse = _windowed(_Level(coarse.hu_a[box], coarse.voxel_irc, low))
    fine = _windowed(_level(ct, FINE_MM, (low * coarse.voxel_irc, high * coarse.voxel_irc)))

    centers, radii, values = [], [], []
    for sigma_mm in SCALES_MM:
        level = fine if sigma_mm < FINE_SCALE_LIMIT_MM else coarse
        points, blobness = _maxima(level, sigma_mm)
        points_mm = points * level.voxel_irc
        # Near the lungs: the distance at the nearest coarse voxel of the box.
        nearest = np.rint(points_mm / coarse.voxel_irc).astype(int) - low
        nearest = np.clip(nearest, 0, np.array(distance_mm.shape) - 1)
        radius_mm = np.sqrt(3.0) * sigma_mm
        near = distance_mm[tuple(nearest.T)] <= radius_mm + LUNG_GAP_MM
        centers.append(points_mm[near])
        radii.append(np.full(int(near.sum()), radius_mm))
        values.append(blobness[near])
    centers_mm, radius, blobness = np.concatenate(centers), np.concatenate(radii), np.concatenate(values)
    keep = _suppress(centers_mm, radius, blobness, max_blobs)
    spacing_irc = np.asarray(ct.spacing_xyz[::-1], dtype=np.float64)
    return [Blob(irc2xyz(centers_mm[k] / spacing_irc, ct.origin_xyz, ct.spacing_xyz, ct.direction),
                 float(radius[k]), float(blobness[k])) for k in keep]


def _suppress(centers_mm: np.ndarray, radius_mm: np.ndarray, strength: np.ndarray, limit: int) -> list[int]:
    """Greedy, strongest first: drop every maximum inside the ball of a stronger kept one."""
    order = np.argsort(-strength, kind="stable")
    tree = cKDTree(centers_mm) if len(centers_mm) else None
    dropped = np.zeros(len(centers_mm), dtype=bool)
    kept: list[int] = []
    for k in order:
        if dropped[k]:
            continue
        kept.append(int(k))
        if len(kept) >= limit:
            break
        dropped[tree.query_ball_point(centers_mm[k], radius_mm[k])] = True
    return kept


"""Probability map -> candidate centres: threshold, split, label, weigh.

Grouping turns the segmentation model's per-voxel probabilities into the points the classifier
then scores, as the reference does: voxels above ``threshold`` (0.5); one erosion, which cuts the
thin necks where two blobs touch; connected components (6-connected); and per component the
centre of mass weighted by HU + 1001, so the dense core of a nodule pulls the centre rather
than a faint halo. Centres go to world millimetres through the grid's own geometry (origin,
spacing, any direction matrix).

Two things differ from the reference, both so that nothing is lost to the erosion: the eroded
voxels are given back, each to the component whose core it touches (grown layer by layer
inside the marked voxels, so a component's volume, and its estimated diameter, is that of its
marked voxels), and a blob too thin to survive the erosion (a small nodule of two or three
voxels) stays a component of its own instead of vanishing. Components
smaller than a sphere of ``min_diameter_mm`` are specks and are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from luna.data.seg_grid import GridVolume
from luna.luna16.geometry import XyzTuple

THRESHOLD = 0.5
# Components whose volume is that of a sphere smaller than this are dropped as specks: less
# than the 3 mm below which LUNA16 does not count a nodule, with room for a model that marks
# small nodules a little small.
MIN_DIAMETER_MM = 2.0
_CROSS = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class SegCandidate:
    """One connected component of the thresholded map.

    ``center_irc`` is in continuous voxels of the grid the map lies on; ``diameter_mm`` is that
    of the sphere of the component's volume; ``max_probability`` its highest voxel probability.
    """

    center_xyz: XyzTuple
    center_irc: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    max_probability: float
    n_voxels: int


def equivalent_diameter_mm(volume_mm3: float | np.ndarray) -> float | np.ndarray:
    """Diameter of the sphere of ``volume_mm3``."""
    return np.cbrt(6.0 * np.asarray(volume_mm3, dtype=np.float64) / np.pi)


def split_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label ``mask`` after one erosion, then give the eroded voxels back (see the module docstring).

    Returns:
        ``(labels, count)``: an int32 array of ``mask``'s shape, 0 outside the mask, 1..count inside.
    """
    core, count = ndimage.label(ndimage.binary_erosion(mask, structure=_CROSS), structure=_CROSS)
    labels = core.astype(np.int32, copy=False)
    # The eroded voxels grow back onto the cores they touch, a layer at a time, inside the mask.
    while count:
        grown = ndimage.grey_dilation(labels, footprint=_CROSS)
        joining = mask & (labels == 0) & (grown > 0)
        if not joining.any():
            break
        labels = np.where(joining, grown, labels)
    # Whatever is left had no core: blobs too thin to survive the erosion, each its own component.
    rest, n_rest = ndimage.label(mask & (labels == 0), structure=_CROSS)
    if n_rest:
        labels = np.where(rest > 0, rest + count, labels).astype(np.int32, copy=False)
    return labels, count + n_rest


def group_candidates(probability_a: np.ndarray, volume: GridVolume, threshold: float = THRESHOLD,
                     min_diameter_mm: float = MIN_DIAMETER_MM) -> list[SegCandidate]:
    """The candidates of one scan, largest first.

    Args:
        probability_a: (I, R, C) nodule probability per voxel of ``volume``.
        volume: the grid the map lies on: its HU weigh the centres, its geometry places them.
        threshold: a voxel above it is marked.
        min_diameter_mm: components smaller than a sphere of this diameter are dropped.

    Returns:
        One :class:`SegCandidate` per component that is not a speck.
    """
    if probability_a.shape != volume.hu_a.shape:
        raise ValueError(f"probability map {probability_a.shape} and volume {volume.hu_a.shape} differ in shape")
    mask = probability_a > threshold
    box = _bounding_box(mask)
    if box is None:
        return []
    # Work inside the marked voxels' box (one voxel wider, for the erosion): a fraction of the scan.
    labels, count = split_components(mask[box])
    probability_a, hu_a, offset = probability_a[box], volume.hu_a[box], np.array([s.start for s in box])
    index = np.arange(1, count + 1)
    voxel_mm3 = float(np.prod(volume.spacing_irc))
    n_voxels = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    keep = index[n_voxels * voxel_mm3 >= np.pi / 6 * min_diameter_mm ** 3]
    if keep.size == 0:
        return []
    # HU + 1001 weighs every voxel (air at -1000 too) by its density.
    weights = np.asarray(hu_a, dtype=np.float32) + 1001.0
    centers = np.atleast_2d(np.asarray(ndimage.center_of_mass(weights, labels, keep), dtype=np.float64)) + offset
    peaks = np.atleast_1d(ndimage.maximum(probability_a, labels, keep))
    candidates = []
    for label, center_irc, peak in zip(keep, centers, peaks):
        volume_mm3 = float(n_voxels[label - 1] * voxel_mm3)
        candidates.append(SegCandidate(volume.irc2xyz(center_irc), tuple(float(v) for v in center_irc),
                                       float(equivalent_diameter_mm(volume_mm3)), volume_mm3, float(peak),
                                       int(n_voxels[label - 1])))
    candidates.sort(key=lambda c: -c.volume_mm3)
    return candidates


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The box of the set voxels, one voxel wider on each side (inside the array); None if none."""
    bounds = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        bounds.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, mask.shape[axis])))
    return tuple(bounds)


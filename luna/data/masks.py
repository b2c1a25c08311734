"""Training masks for the segmentation model, made from the annotations alone.

LUNA16 gives each nodule as a centre and a diameter, not as voxels. Two rules turn that into a
voxel mask (``MASK_RULES``):

- ``"box"``, the reference's: from the centre voxel walk outwards along each axis, both ways at
  once, while the HU on both sides stays above ``MASK_HU`` (-700, denser than lung); the box so
  found, at least 5 voxels wide, is marked where its voxels are above ``MASK_HU``. A nodule
  touching a vessel or the chest wall along an axis makes the walk run along that structure,
  and the box then marks a stretch of vessel or wall as nodule.
- ``"sphere"`` (the default): the voxels within the annotated radius of the centre that are
  above ``MASK_HU``. The annotation says how big the nodule is, so the mask cannot run along a
  vessel; the HU keeps it to the dense part (lung between lobes stays out). When no voxel of
  the sphere passes (a faint ground-glass nodule), its inner half is marked: the annotation
  says a nodule is there, and an empty mask would teach the model to miss it.

Both take positions on any grid (a scan's own or :mod:`luna.data.seg_grid`'s) through its
geometry; distances are in millimetres, so the sphere is round on anisotropic voxels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

MASK_HU = -700
MASK_RULES = ("sphere", "box")
# The reference's smallest half-width of a box, in voxels: a walk starts two voxels out.
BOX_MIN_RADIUS = 2


def _box_radius(line: np.ndarray, center: int, threshold: float) -> int:
    """Half-width of the reference's walk along one line of voxels through ``center``."""
    radius = BOX_MIN_RADIUS
    while (center - radius - 1 >= 0 and center + radius + 1 < len(line)
           and line[center - radius - 1] > threshold and line[center + radius + 1] > threshold):
        radius += 1
    return radius


def box_mask(hu_a: np.ndarray, center_irc: Sequence[int], threshold: float = MASK_HU) -> tuple[tuple[slice, ...], np.ndarray]:
    """The reference's mask of one nodule: where it lies and its voxels there.

    Args:
        hu_a: (I, R, C) HU.
        center_irc: the annotated centre's voxel.
        threshold: HU above which a voxel is nodule.

    Returns:
        ``(box, mask)``: the box as slices of ``hu_a`` and a bool mask of the box's shape.
    """
    center = [int(np.clip(c, 0, n - 1)) for c, n in zip(center_irc, hu_a.shape)]
    i, r, c = center
    lines = (hu_a[:, r, c], hu_a[i, :, c], hu_a[i, r, :])
    radii = [_box_radius(line, pos, threshold) for line, pos in zip(lines, center)]
    box = tuple(slice(max(pos - rad, 0), min(pos + rad + 1, n)) for pos, rad, n in zip(center, radii, hu_a.shape))
    return box, hu_a[box] > threshold


def sphere_mask(hu_a: np.ndarray, spacing_irc: Sequence[float], center_irc: Sequence[float], diameter_mm: float,
                threshold: float = MASK_HU) -> tuple[tuple[slice, ...], np.ndarray]:
    """The voxels within ``diameter_mm / 2`` of a centre that are above ``threshold`` HU.

    Args:
        hu_a: (I, R, C) HU.
        spacing_irc: mm per voxel along I, R and C.
        center_irc: the centre in continuous voxel coordinates.
        diameter_mm: the annotated diameter.
        threshold: HU above which a voxel is nodule.

    Returns:
        ``(box, mask)`` as :func:`box_mask`; the box bounds the sphere (clipped to the volume).
        The mask holds the sphere's inner half (whatever the HU) when no voxel passes the threshold.
    """
    spacing = np.asarray(spacing_irc, dtype=np.float64)
    center = np.asarray(center_irc, dtype=np.float64)
    radius_mm = max(float(diameter_mm), 0.0) / 2
    reach = np.ceil(radius_mm / spacing).astype(int)
    nearest = np.rint(center).astype(int)
    box = tuple(slice(int(np.clip(p - k, 0, n)), int(np.clip(p + k + 1, 0, n)))
                for p, k, n in zip(nearest, reach, hu_a.shape))
    axes = [(np.arange(s.start, s.stop) - c) * mm for s, c, mm in zip(box, center, spacing)]
    dist2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    inside = dist2 <= radius_mm ** 2
    mask = inside & (hu_a[box] > threshold)
    if not mask.any():
        mask = dist2 <= max(radius_mm / 2, float(spacing.min()) / 2) ** 2
    return box, mask


def nodule_mask(hu_a: np.ndarray, spacing_irc: Sequence[float], centers_irc: np.ndarray, diameters_mm: Sequence[float],
                rule: str = "sphere", threshold: float = MASK_HU) -> np.ndarray:
    """The mask of every nodule of a volume (their union) by ``rule``.

    Args:
        hu_a: (I, R, C) HU.
        spacing_irc: mm per voxel along I, R and C.
        centers_irc: (M, 3) nodule centres in continuous voxel coordinates of ``hu_a``.
        diameters_mm: (M,) their diameters.
        rule: ``"sphere"`` or ``"box"`` (see the module docstring).
        threshold: HU above which a voxel is nodule.

    Returns:
        A bool array of ``hu_a``'s shape.
    """
    if rule not in MASK_RULES:
        raise ValueError(f"mask rule must be one of {', '.join(MASK_RULES)}, got {rule!r}")
    mask = np.zeros(hu_a.shape, dtype=bool)
    for center, diameter in zip(np.asarray(centers_irc, dtype=np.float64).reshape(-1, 3), diameters_mm):
        if rule == "box":
            box, part = box_mask(hu_a, np.rint(center).astype(int), threshold)
        else:
            box, part = sphere_mask(hu_a, spacing_irc, center, float(diameter), threshold)
        mask[box] |= part
    return mask

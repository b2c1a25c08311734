"""Low-level rasterising primitives for the synthetic chest CT (:mod:`luna.synth.phantom`).

Everything here works on a float32 volume in the phantom's canonical layout (index =
feet->head, row = anterior->posterior, column = right->left) with positions in "local"
millimetres ``(z, y, x)`` from voxel 0. The functions know nothing about anatomy: they are
kept apart from the chest builder (:mod:`luna.synth.anatomy`, :mod:`luna.synth.findings`)
so that code reads as anatomy, and so tests can paint simple shapes without building a chest.
"""
from __future__ import annotations

import numpy as np


def _blend(local: np.ndarray, soft: np.ndarray, value: float, mode: str) -> None:
    """Mix ``value`` into ``local`` (a view of the volume) with weight ``soft`` in [0, 1].

    "max" only brightens and "min" only darkens, so overlapping objects keep the stronger
    one; "set" replaces (bone marrow inside cortex, lumen inside a wall).
    """
    delta = value - local
    if mode == "max":
        np.maximum(delta, 0, out=delta)
    elif mode == "min":
        np.minimum(delta, 0, out=delta)
    delta *= soft
    local += delta


def _box(lo_mm: np.ndarray, hi_mm: np.ndarray, spacing: np.ndarray, shape: tuple[int, ...]):
    """Voxel slices covering a local-mm box, clipped to the volume, plus voxel-centre mm axes."""
    lo = np.maximum(np.floor(lo_mm / spacing).astype(int), 0)
    hi = np.minimum(np.ceil(hi_mm / spacing).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None, (None, None, None)
    axes = [np.arange(lo[k], hi[k], dtype=np.float32) * np.float32(spacing[k]) for k in range(3)]
    grid = (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    return tuple(slice(lo[k], hi[k]) for k in range(3)), grid


def paint_tubes(vol: np.ndarray, spacing: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                r_start: np.ndarray, r_end: np.ndarray, value: float, mode: str, edge_mm: float) -> None:
    """Rasterise tapered tubes (capsules) into ``vol`` in place, one local box per segment.

    Args:
        vol: float32 volume (I, R, C).
        spacing: mm per voxel in (z, y, x) order.
        starts, ends: (N, 3) segment end points in local mm (z, y, x).
        r_start, r_end: (N,) radii in mm at either end.
        value: HU inside the tube.
        mode: "max", "min" or "set" (see :func:`_blend`).
        edge_mm: width of the linear ramp at the surface (partial-volume effect).
    """
    for a, b, ra, rb in zip(starts, ends, r_start, r_end):
        reach = max(ra, rb) + edge_mm
        box, (z, y, x) = _box(np.minimum(a, b) - reach, np.maximum(a, b) + reach, spacing, vol.shape)
        if box is None:
            continue
        ab = (b - a).astype(np.float32)
        z, y, x = z - np.float32(a[0]), y - np.float32(a[1]), x - np.float32(a[2])
        t = np.clip((z * ab[0] + y * ab[1] + x * ab[2]) / max(float(ab @ ab), 1e-9), 0, 1)
        dist = np.sqrt((z - t * ab[0]) ** 2 + (y - t * ab[1]) ** 2 + (x - t * ab[2]) ** 2)
        soft = np.clip((ra + t * (rb - ra) - dist) / edge_mm + 0.5, 0, 1)
        _blend(vol[box], soft, value, mode)


def wander_segments(a: np.ndarray, b: np.ndarray, r_start: np.ndarray, r_end: np.ndarray, tortuosity: float,
                    rng: np.random.Generator, pieces: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tapered segments (as :func:`paint_tubes` takes them) made to curve: each becomes ``pieces``
    shorter ones whose inner joints move sideways by ``tortuosity`` x its length (normal draws).
    The ends stay put, so a tree's forks are where they were; radii taper on as before."""
    t = np.linspace(0, 1, pieces + 1)[None, :, None]
    pts = a[:, None] + t * (b - a)[:, None]
    length = np.linalg.norm(b - a, axis=1)[:, None, None]
    shift = rng.normal(0, 1, (len(a), pieces - 1, 3)) * tortuosity * length
    axis = _unit(b - a)[:, None]
    shift -= (shift * axis).sum(-1, keepdims=True) * axis      # sideways only
    pts[:, 1:-1] += shift
    radii = r_start[:, None] + t[..., 0] * (r_end - r_start)[:, None]
    return pts[:, :-1].reshape(-1, 3), pts[:, 1:].reshape(-1, 3), radii[:, :-1].ravel(), radii[:, 1:].ravel()


def paint_blob(vol: np.ndarray, spacing: np.ndarray, center: np.ndarray, transform: np.ndarray,
               lobes: list[tuple[np.ndarray, float]], radius: float, value: float, mode: str,
               edge_mm: float) -> None:
    """Rasterise a lumpy ellipsoid (a nodule): ``|transform @ offset| < 1`` plus sphere lobes.

    Args:
        center: centre in local mm (z, y, x); transform maps an offset in mm to unit-sphere units.
        lobes: (offset from centre in mm, radius in mm) of spheres merged with the body.
        radius: nominal radius in mm, used for the edge ramp and the bounding box.
    """
    reach = 1.5 * radius + max((np.linalg.norm(o) + r for o, r in lobes), default=0) + edge_mm
    box, (z, y, x) = _box(center - reach, center + reach, spacing, vol.shape)
    if box is None:
        return
    z, y, x = z - np.float32(center[0]), y - np.float32(center[1]), x - np.float32(center[2])
    t = transform.astype(np.float32)
    u = [t[k, 0] * z + t[k, 1] * y + t[k, 2] * x for k in range(3)]
    soft = np.clip((1 - np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)) * (radius / edge_mm) + 0.5, 0, 1)
    for offset, lobe_r in lobes:
        dist = np.sqrt((z - offset[0]) ** 2 + (y - offset[1]) ** 2 + (x - offset[2]) ** 2)
        np.maximum(soft, np.clip((lobe_r - dist) / edge_mm + 0.5, 0, 1), out=soft)
    _blend(vol[box], soft, value, mode)


def _in_mask(mask: np.ndarray, spacing: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """Whether each local-mm point (N, 3) falls in a True voxel of ``mask`` (False outside)."""
    idx = np.rint(np.atleast_2d(points_mm) / spacing).astype(int)
    inside = np.all((idx >= 0) & (idx < mask.shape), axis=1)
    hit = np.zeros(len(idx), dtype=bool)
    hit[inside] = mask[tuple(idx[inside].T)]
    return hit


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _perpendicular(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit vector at right angles to unit vector ``d``."""
    v = rng.standard_normal(3)
    return _unit(v - (v @ d) * d)

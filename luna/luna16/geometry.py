"""World (XYZ, millimetres) <-> voxel (IRC: index, row, column) coordinates (docs/luna16.md, "Geometry").

A scan header gives origin (mm), spacing (mm per voxel) and a 3x3 direction matrix, all in
x, y, z order. SimpleITK returns voxel arrays indexed (z, y, x), so an IRC tuple is a CRI
vector reversed. The forward map is ``xyz = origin + direction @ (cri * spacing)``.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


class XyzTuple(NamedTuple):
    """A point in patient (world) coordinates, millimetres."""

    x: float
    y: float
    z: float


class IrcTuple(NamedTuple):
    """A voxel position: index (slice, z), row (y), column (x)."""

    index: int
    row: int
    col: int


def _as_direction(direction: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(direction, dtype=np.float64).reshape(3, 3)


def xyz2irc_float(
    coord_xyz: Sequence[float],
    origin_xyz: Sequence[float],
    spacing_xyz: Sequence[float],
    direction: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Continuous voxel coordinates (I, R, C) of a world point, before rounding."""
    offset_xyz = np.asarray(coord_xyz, dtype=np.float64) - np.asarray(origin_xyz, dtype=np.float64)
    # Solving is exact for any invertible direction matrix (not only orthonormal ones).
    cri = np.linalg.solve(_as_direction(direction), offset_xyz) / np.asarray(spacing_xyz, dtype=np.float64)
    return cri[::-1]


def xyz2irc(
    coord_xyz: Sequence[float],
    origin_xyz: Sequence[float],
    spacing_xyz: Sequence[float],
    direction: Sequence[float] | np.ndarray,
) -> IrcTuple:
    """World point (mm) -> nearest voxel (I, R, C).

    Args:
        coord_xyz: point in millimetres, x/y/z.
        origin_xyz: world position of voxel (0, 0, 0).
        spacing_xyz: voxel size in mm along x/y/z.
        direction: 3x3 direction cosines (any shape that reshapes to 3x3, row-major).

    Returns:
        The voxel whose centre is nearest, as integers.
    """
    irc = np.rint(xyz2irc_float(coord_xyz, origin_xyz, spacing_xyz, direction)).astype(int)
    return IrcTuple(int(irc[0]), int(irc[1]), int(irc[2]))


def irc2xyz(
    coord_irc: Sequence[float],
    origin_xyz: Sequence[float],
    spacing_xyz: Sequence[float],
    direction: Sequence[float] | np.ndarray,
) -> XyzTuple:
    """Voxel (I, R, C) -> world point (mm) of that voxel's centre."""
    cri = np.asarray(coord_irc, dtype=np.float64)[::-1]
    xyz = _as_direction(direction) @ (cri * np.asarray(spacing_xyz, dtype=np.float64))
    xyz = xyz + np.asarray(origin_xyz, dtype=np.float64)
    return XyzTuple(float(xyz[0]), float(xyz[1]), float(xyz[2]))

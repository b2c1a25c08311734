"""The anatomy of tools/other_phantoms.py: a chest, its vessel and airway trees, fissures and nodules.

Everything is drawn on a fine grid in HU (z, y, x; mm from the first voxel), before any scanner
sees it (tools/other_phantoms.py does the acquisition, the candidates and the files). Nothing here
comes from ``luna.synth``: this is the second, independent way of drawing a chest.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.special import expit

KINDS = {"solid": 0.33, "spiculated": 0.1, "ground_glass": 0.14, "part_solid": 0.1, "calcified": 0.06,
         "juxta_pleural": 0.15, "juxta_vascular": 0.12}


@dataclass
class Nodule:
    center_mm: np.ndarray  # local (z, y, x) in mm from the first voxel of the drawing grid
    diameter_mm: float
    kind: str


@dataclass
class Scene:
    """The drawing grid: a fine volume (z, y, x) in HU and what the placement of nodules needs."""
    hu: np.ndarray
    step_mm: np.ndarray  # (dz, dy, dx)
    lung: np.ndarray  # bool
    wall_mm: np.ndarray  # distance to the lung border inside the lungs
    vessel_mm: np.ndarray  # distance to the nearest vessel centre line
    vessel_radius_mm: np.ndarray  # that vessel's radius
    box: tuple[slice, ...]  # the lungs' bounding box and a margin, where distance maps are computed
    nodules: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # what was drawn, for phantom_scans.csv


def grid_axes(shape: tuple[int, int, int], step_mm: np.ndarray) -> list[np.ndarray]:
    """Coordinates in mm along each axis, shaped to broadcast into a (z, y, x) volume."""
    return [np.arange(n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)]) * s
            for i, (n, s) in enumerate(zip(shape, step_mm))]


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int = 6) -> np.ndarray:
    """Low-frequency noise in [-1, 1] over ``shape``: a coarse random grid interpolated up."""
    small = rng.uniform(-1, 1, size=(coarse,) * 3).astype(np.float32)
    return ndimage.zoom(small, [n / coarse for n in shape], order=1, mode="nearest")[tuple(slice(n) for n in shape)]


def draw_body(rng: np.random.Generator, shape: tuple[int, int, int], step_mm: np.ndarray, fov_mm: float) -> Scene:
    """Air, a table, a torso of fat over muscle, a spine, a heart and two lungs with their parenchyma."""
    z, y, x = grid_axes(shape, step_mm)
    length = shape[0] * step_mm[0]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    cx, cy = fov_mm / 2 + rng.uniform(-10, 10), fov_mm / 2 + rng.uniform(-5, 15)
    a = fov_mm * rng.uniform(0.36, 0.44)
    b = a * rng.uniform(0.62, 0.74)
    grow = 0.88 + 0.12 * (1 - z / length)  # the chest widens towards its base (z = 0)
    shape_power = rng.uniform(2.2, 3.0)  # a superellipse: a squarer torso than an ellipse
    outer = (np.abs(x - cx) / (a * grow)) ** shape_power + (np.abs(y - cy) / (b * grow)) ** shape_power
    hu[(y > cy + b + 12) & (y < cy + b + 22) & (np.abs(x - cx) < a * 1.1) & (z >= 0)] = -150  # table foam
    hu[outer < 1] = rng.uniform(-110, -80)  # fat
    fat_mm = rng.uniform(8, 25)
    inner = (np.abs(x - cx) / (a * grow - fat_mm)) ** shape_power + \
        (np.abs(y - cy) / (b * grow - fat_mm)) ** shape_power
    hu[inner < 1] = rng.uniform(35, 55)  # muscle and mediastinum
    spine = ((x - cx) ** 2 + (y - (cy + b * 0.62)) ** 2) < (a * 0.11) ** 2
    hu[np.broadcast_to(spine, shape)] = rng.uniform(250, 450)

    lung = np.zeros(shape, dtype=bool)
    bump = smooth_field(rng, shape)
    for side in (-1, 1):
        lx, ly = cx + side * a * rng.uniform(0.42, 0.5), cy - b * 0.05
        ax, by = a * rng.uniform(0.36, 0.42), b * rng.uniform(0.62, 0.72)
        top = length * rng.uniform(0.88, 0.97)
        taper = np.clip((top - z) / (length * 0.3), 0, 1) ** 0.5  # the apex narrows
        dome = length * rng.uniform(0.08, 0.2) + length * rng.uniform(0.1, 0.18) * (
            1 - ((x - lx) / ax) ** 2 - ((y - ly) / by) ** 2)
        norm = ((x - lx) / (ax * grow)) ** 2 + ((y - ly) / (by * grow)) ** 2
        lung |= (norm + 0.12 * bump < taper ** 2) & (z > dome) & (inner < 1)
    heart = ((x - (cx + a * 0.12)) / (a * 0.34)) ** 2 + ((y - (cy - b * 0.15)) / (b * 0.45)) ** 2 + \
        ((z - length * 0.3) / (length * 0.3)) ** 2 < 1
    lung &= ~heart
    hu[heart] = rng.uniform(30, 50)
    # Parenchyma: denser towards the back (dependent lung), with a fine texture of its own.
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 1.2 / step_mm)
    parenchyma = rng.uniform(-890, -840) + rng.uniform(20, 70) * (y - cy + b) / (2 * b) + \
        rng.uniform(8, 20) * texture / (texture.std() + 1e-6)
    hu = np.where(lung, parenchyma, hu).astype(np.float32)
    box = lung_box(lung, step_mm)
    wall = np.zeros(shape, np.float32)
    wall[box] = ndimage.distance_transform_edt(lung[box], sampling=step_mm)
    return Scene(hu, step_mm, lung, wall, np.full(shape, np.inf, np.float32), np.zeros(shape, np.float32), box)


def lung_box(lung: np.ndarray, step_mm: np.ndarray, margin_mm: float = 12.0) -> tuple[slice, ...]:
    """The lungs' bounding box and a margin: distance maps are only needed there (and cost most)."""
    margin = np.ceil(margin_mm / step_mm).astype(int)
    box = []
    for axis in range(3):
        hit = np.flatnonzero(lung.any(axis=tuple(a for a in range(3) if a != axis)))
        stop = min(hit[-1] + margin[axis] + 1, lung.shape[axis]) if len(hit) else 0
        box.append(slice(max(hit[0] - margin[axis], 0), stop) if len(hit) else slice(0, 0))
    return tuple(box)


def grow_tree(rng: np.random.Generator, scene: Scene, start_mm: np.ndarray, direction: np.ndarray,
              radius_mm: float, min_radius_mm: float, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre-line points (mm) and radii of a forking random walk that stays inside the lungs.

    Branches grow breadth first, so a tree that runs out of points has its large vessels everywhere
    and stops at the finest ones. Only the trunk may start outside the lungs (at the hilum)."""
    points, radii = [], []
    queue = deque([(start_mm, direction / np.linalg.norm(direction), radius_mm, 8.0)])
    step = 0.8
    while queue and len(points) < max_points:
        p, d, r, outside_mm = queue.popleft()
        run_mm, fork_after = 0.0, r * rng.uniform(5, 14)
        while r >= min_radius_mm and len(points) < max_points:
            d = d + rng.normal(0, 0.09, 3)
            wall = wall_at(scene, p)
            if 0 < wall < 6:  # steer away from the pleura, down the distance map's slope
                d = d + 0.3 * np.array([wall_at(scene, p + e) - wall_at(scene, p - e) for e in np.eye(3) * 1.5]) / 3
            d /= np.linalg.norm(d)
            p = p + step * d
            if wall_at(scene, p) <= 0 and run_mm >= outside_mm:
                break
            points.append(p)
            radii.append(r)
            r *= 1 - 0.003 * step
            run_mm += step
            if run_mm >= fork_after:
                ratio = rng.uniform(0.45, 1.0)  # the smaller child's radius over the larger's
                r1 = r / (1 + ratio ** 3) ** (1 / 3)
                axis = np.cross(d, rng.normal(size=3))
                axis /= np.linalg.norm(axis)
                for r_child, angle in ((r1, rng.uniform(0.2, 0.6)), (r1 * ratio, -rng.uniform(0.5, 1.1))):
                    queue.append((p, rotate(d, axis, angle), r_child, 0.0))
                break
    return np.array(points).reshape(-1, 3), np.array(radii)


def wall_at(scene: Scene, point_mm: np.ndarray) -> float:
    """Distance (mm) to the lung border at the voxel nearest a point; 0 outside the lungs or the grid."""
    index = np.round(point_mm / scene.step_mm).astype(int)
    if np.any(index < 0) or np.any(index >= scene.wall_mm.shape):
        return 0.0
    return float(scene.wall_mm[tuple(index)])


def rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation of ``v`` about the unit ``axis``."""
    return v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * axis.dot(v) * (1 - np.cos(angle))


def nearest_line(scene: Scene, points: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) from every voxel to the nearest centre-line point, and that point's radius.

    Computed inside the lungs' box only; outside it the distance is infinite and the radius 0."""
    box = scene.box
    lo = np.array([b.start for b in box])
    size = np.array([b.stop - b.start for b in box])
    index = np.round(points / scene.step_mm).astype(int) - lo
    keep = np.all((index >= 0) & (index < size), axis=1)
    seeds = np.zeros(tuple(size), dtype=np.float32)
    np.maximum.at(seeds, tuple(index[keep].T), radii[keep].astype(np.float32))
    distance = np.full(scene.hu.shape, np.inf, np.float32)
    radius = np.zeros(scene.hu.shape, np.float32)
    if (seeds > 0).any():
        inside, nearest = ndimage.distance_transform_edt(seeds == 0, sampling=scene.step_mm, return_indices=True)
        distance[box], radius[box] = inside, seeds[tuple(nearest)]
    return distance, radius


def draw_vessels_and_airways(rng: np.random.Generator, scene: Scene, fov_mm: float) -> None:
    """Vessel trees from each hilum (bright tubes) and airway trees beside them (walls around air)."""
    vessel_points, vessel_radii, airway_points, airway_radii = [], [], [], []
    lung_zyx = np.argwhere(scene.lung[:: 4, :: 4, :: 4]) * 4 * scene.step_mm
    if len(lung_zyx) == 0:
        return
    mid_x = fov_mm / 2
    # Trees grow until their twigs are thinner than the scanner can show or leave the lungs; the cap
    # only guards the run time (a tree cut short would end in blunt stumps, which lungs do not have).
    budget = 30_000
    for side in (-1, 1):
        half = lung_zyx[(lung_zyx[:, 2] - mid_x) * side > 0]
        if len(half) == 0:
            continue
        centre = half.mean(axis=0)
        hilum = half[np.argmin(np.abs(half[:, 2] - mid_x) + np.abs(half[:, 0] - centre[0]) * 0.5)]
        near_hilum = half[np.argsort(np.linalg.norm(half - hilum, axis=1))[:200]]
        # (how many trees, trunk radius range mm, thinnest branch mm, where they go): vessels, then airways
        for trees, trunk_mm, thinnest_mm, points, radii in (((6, 10), (3.0, 5.0), 0.35, vessel_points, vessel_radii),
                                                            ((1, 3), (3.0, 4.5), 0.9, airway_points, airway_radii)):
            for _ in range(rng.integers(*trees)):
                start = near_hilum[rng.integers(len(near_hilum))]
                toward = half[rng.integers(len(half))] - start
                p, r = grow_tree(rng, scene, start, toward, rng.uniform(*trunk_mm), thinnest_mm, budget)
                points.append(p)
                radii.append(r)
    contrast = rng.random() < 0.25
    vessel_hu = rng.uniform(120, 260) if contrast else rng.uniform(25, 60)
    scene.settings.update(contrast=int(contrast), vessel_hu=round(vessel_hu))
    scene.vessel_mm, scene.vessel_radius_mm = nearest_line(scene, np.concatenate(vessel_points),
                                                           np.concatenate(vessel_radii))
    inside = expit((scene.vessel_radius_mm - scene.vessel_mm) / 0.22)
    scene.hu += (inside * (vessel_hu - scene.hu)).astype(np.float32)
    if airway_points:
        distance, radius = nearest_line(scene, np.concatenate(airway_points), np.concatenate(airway_radii))
        wall_mm = np.maximum(0.35, 0.18 * radius)
        soft = lambda edge: expit((edge - distance) / 0.15)  # noqa: E731
        wall, lumen = soft(radius + wall_mm) - soft(radius), soft(radius)
        in_lung = scene.lung | (scene.wall_mm > 0)
        scene.hu = np.where(in_lung, scene.hu + wall * (rng.uniform(-80, 0) - scene.hu), scene.hu)
        scene.hu = np.where(in_lung, scene.hu + lumen * (-995 - scene.hu), scene.hu).astype(np.float32)


def draw_fissures(rng: np.random.Generator, scene: Scene) -> None:
    """One or two thin, gently curved sheets through each lung, a little denser than parenchyma."""
    z, y, x = grid_axes(scene.hu.shape, scene.step_mm)
    labels, count = ndimage.label(scene.lung[::2, ::2, ::2])
    for lobe in range(1, min(count, 2) + 1):
        where = np.argwhere(labels == lobe) * 2 * scene.step_mm
        if len(where) < 100:
            continue
        centre = where.mean(axis=0)
        for _ in range(rng.integers(1, 3)):
            tilt = rng.uniform(0.5, 1.1)
            normal = np.array([np.cos(tilt), np.sin(tilt) * rng.choice([-1, 1]), rng.uniform(-0.2, 0.2)])
            normal /= np.linalg.norm(normal)
            bend = rng.uniform(-0.004, 0.004)
            signed = (z - centre[0]) * normal[0] + (y - centre[1]) * normal[1] + (x - centre[2]) * normal[2] + \
                bend * ((x - centre[2]) ** 2 + (y - centre[1]) ** 2)
            sheet = np.exp(-(signed / 0.4) ** 2) * scene.lung
            scene.hu = np.maximum(scene.hu, scene.hu + sheet * (rng.uniform(-700, -600) - scene.hu))


def place_nodules(rng: np.random.Generator, scene: Scene, count: int, excluded: bool = False) -> None:
    """Nodules at sites their kind asks for (interior, on the pleura, on a vessel), apart from each other."""
    kinds, weights = zip(*KINDS.items())
    for _ in range(count):
        kind = "solid" if excluded else str(rng.choice(kinds, p=np.array(weights) / sum(weights)))
        diameter = rng.uniform(2.0, 2.9) if excluded else float(np.clip(rng.lognormal(np.log(6.2), 0.55), 3.2, 30))
        radius = diameter / 2
        if kind == "juxta_pleural":
            site = scene.lung & (np.abs(scene.wall_mm - radius * 0.55) < 0.8)
        elif kind == "juxta_vascular":
            off_vessel_mm = scene.vessel_mm - scene.vessel_radius_mm - radius * 0.6
            site = scene.lung & (scene.vessel_radius_mm > 0.9) & (np.abs(off_vessel_mm) < 0.6) & \
                (scene.wall_mm > radius + 2)
        else:
            site = scene.lung & (scene.wall_mm > radius + 3) & (scene.vessel_mm > scene.vessel_radius_mm + radius * 0.3)
        options = np.argwhere(site[::2, ::2, ::2]) * 2
        for index in options[rng.permutation(len(options))[:200]]:
            centre = index * scene.step_mm
            if all(np.linalg.norm(centre - n.center_mm) > radius + n.diameter_mm / 2 + 6 for n in scene.nodules):
                paint_nodule(rng, scene, centre, radius, kind)
                scene.nodules.append(Nodule(centre, diameter, "excluded" if excluded else kind))
                break


def paint_nodule(rng: np.random.Generator, scene: Scene, centre_mm: np.ndarray, radius_mm: float, kind: str) -> None:
    """A lobulated blob (spikes, a ground-glass halo, a calcified core by kind), never hiding a vessel."""
    reach = radius_mm * (2.6 if kind == "spiculated" else 1.5) + 3
    lo = np.maximum(np.floor((centre_mm - reach) / scene.step_mm).astype(int), 0)
    hi = np.minimum(np.ceil((centre_mm + reach) / scene.step_mm).astype(int) + 1, scene.hu.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    axes = [np.arange(a, b, dtype=np.float32).reshape([-1 if k == i else 1 for k in range(3)]) * s - c
            for i, (a, b, s, c) in enumerate(zip(lo, hi, scene.step_mm, centre_mm))]
    offset = np.stack(np.broadcast_arrays(*axes), axis=-1)
    distance = np.linalg.norm(offset, axis=-1) + 1e-6
    unit = offset / distance[..., None]
    surface = np.ones_like(distance)
    for _ in range(3):  # lobulation: a few low-order waves on the radius
        v = rng.normal(size=3)
        surface += rng.uniform(0, 0.12) * np.cos(np.pi * rng.integers(2, 4) * unit @ (v / np.linalg.norm(v)) +
                                                 rng.uniform(0, 2 * np.pi))
    surface *= radius_mm
    soft = lambda r, w: expit((r - distance) / w)  # noqa: E731
    local = scene.hu[box]
    if kind in ("ground_glass", "part_solid"):
        halo = rng.uniform(-700, -450) + 30 * rng.normal(size=distance.shape)
        local = np.maximum(local, local + soft(surface, 0.7) * (halo - local))
        if kind == "part_solid":
            core = soft(surface * rng.uniform(0.3, 0.55), 0.3)
            local = np.maximum(local, local + core * (rng.uniform(10, 50) - local))
    else:
        local = np.maximum(local, local + soft(surface, 0.3) * (rng.uniform(-10, 60) - local))
        if kind == "calcified":
            core = soft(surface * rng.uniform(0.4, 0.9), 0.3)
            local = np.maximum(local, local + core * (rng.uniform(250, 700) - local))
        if kind == "spiculated":
            for _ in range(rng.integers(5, 12)):  # spikes: thin cones out of the surface
                v = rng.normal(size=3)
                v /= np.linalg.norm(v)
                length = radius_mm * rng.uniform(1.5, 2.5)
                along = offset @ v
                fraction = np.clip((along - radius_mm * 0.8) / (length - radius_mm * 0.8), 0, 1)
                off_line = np.linalg.norm(offset - along[..., None] * v, axis=-1)
                on_spike = (along > radius_mm * 0.8) & (along < length)
                spike = on_spike * expit((0.5 * (1 - fraction) - off_line) / 0.15)
                local = np.maximum(local, local + spike * (20 - local))
    scene.hu[box] = local

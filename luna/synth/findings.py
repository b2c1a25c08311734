"""Nodules, excluded findings and negative candidates placed in a synthetic chest.

:class:`_Findings` is the half of the chest builder that decides *where things are*: it
samples points in the lungs and on the pleura, places and paints nodules, and draws
negative candidates on structures that look like nodules (vessels, forks, pleura, ribs,
mediastinum). It is a mixin of :class:`luna.synth.anatomy._Chest` rather than a module of
functions so the code reads, and draws from ``rng``, exactly as it did in one class: the
same seed must keep giving byte-identical scans. It relies on the anatomy attributes
declared below, which the chest sets before any of these methods is called.

Positions are in the chest's "local" millimetres ``(z, y, x)`` from voxel 0.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from luna.synth.paint import _in_mask, _perpendicular, _unit, paint_blob, paint_tubes

# Where negative candidates come from, and how often (hard negatives dominate, as in LUNA16).
NEGATIVE_MIX = {"vessel": 0.33, "bifurcation": 0.14, "pleura": 0.15, "rib": 0.08,
                "mediastinum": 0.10, "parenchyma": 0.13, "border": 0.07}
NODULE_KINDS = {"solid": 0.45, "juxta_pleural": 0.16, "juxta_vascular": 0.14,
                "ground_glass": 0.13, "part_solid": 0.07, "calcified": 0.05}


class _Findings:
    """Point samplers, nodule placement and negative candidates (a mixin of ``_Chest``)."""

    # Set by the anatomy builder (``_Chest``) before any method here runs.
    spec: Any   # a synth.anatomy.SizeSpec, not imported: imports point the other way
    rng: np.random.Generator
    vol: np.ndarray
    lung: np.ndarray
    lung_box: tuple[np.ndarray, np.ndarray] | None
    lung_shapes: list[dict]
    spacing: np.ndarray
    extent: np.ndarray
    edge: float
    cx: float
    cy: float
    cav_a: float
    rib_r: float
    spine_y: float
    spine_r: float
    aorta_xy: tuple[float, float]
    aorta_r: float
    heart_center: np.ndarray
    heart_axes: np.ndarray
    airways: list[tuple[np.ndarray, np.ndarray, float, float]]
    vessel_segs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    forks: tuple[np.ndarray, np.ndarray]
    rib_segments: tuple[np.ndarray, np.ndarray]

    # --- point samplers (local mm), used for nodules and candidates
    def lung_points(self, n: int) -> np.ndarray:
        """``n`` or fewer uniform random points inside the lung mask (rejection sampling)."""
        if self.lung_box is None or n == 0:
            return np.zeros((0, 3))
        lo, hi = self.lung_box
        pts = self.rng.uniform(lo, hi, size=(8 * n + 16, 3))
        return pts[_in_mask(self.lung, self.spacing, pts)][:n]

    def pleura_points(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Points on the lung surface, found by marching out from random lung points.

        Returns the points and the outward unit directions that found them.
        """
        starts = self.lung_points(n)
        if len(starts) == 0:
            return starts, starts
        centres = np.array([[0, sh["cy"], sh["cx"]] for sh in self.lung_shapes])
        side = (starts[:, 2] > self.cx).astype(int)
        dirs = starts - centres[side] * [0, 1, 1]
        dirs[:, 0] = self.rng.normal(0, 0.2, len(starts)) * np.linalg.norm(dirs[:, 1:], axis=1)
        dirs = _unit(dirs)
        step = 0.5 * float(self.spacing.min())
        k = np.arange(1, int(2.2 * self.cav_a / step) + 1) * step
        path = starts[:, None, :] + dirs[:, None, :] * k[None, :, None]
        inside = _in_mask(self.lung, self.spacing, path.reshape(-1, 3)).reshape(len(starts), len(k))
        first_out = np.argmax(~inside, axis=1)
        return starts + dirs * (first_out * step)[:, None], dirs

    # --- nodules and excluded findings
    def place_nodules(self, count: int) -> list[tuple[np.ndarray, float, str]]:
        """Choose kind, size and place of ``count`` nodules (fewer if the lungs are too small)."""
        rng, spec = self.rng, self.spec
        kinds = rng.choice(list(NODULE_KINDS), size=count, p=list(NODULE_KINDS.values()))
        placed: list[tuple[np.ndarray, float, str]] = []
        for kind in kinds:
            diameter = spec.diameter_median_mm * np.exp(spec.diameter_log_sd * rng.standard_normal())
            if kind in ("ground_glass", "part_solid"):
                diameter *= 1.3
            diameter = float(np.clip(diameter, *spec.diameter_range_mm))
            center = self._nodule_site(kind, diameter / 2, placed)
            if center is not None:
                placed.append((center, diameter, str(kind)))
        return placed

    def _nodule_site(self, kind: str, radius: float, taken: list) -> np.ndarray | None:
        rng, a, b, r_v, _ = self.rng, *self.vessel_segs
        axes = np.vstack([np.eye(3), -np.eye(3)])
        for _ in range(60):
            if kind == "juxta_pleural":
                wall, out = self.pleura_points(1)
                if len(wall) == 0:
                    continue
                center = wall[0] - out[0] * radius * rng.uniform(0.2, 0.6)
                ok = _in_mask(self.lung, self.spacing, center)[0]
            else:
                if kind == "juxta_vascular" and (r_v >= 0.8).any():
                    big = np.flatnonzero(r_v >= 0.8)
                    j = rng.choice(big)
                    on = a[j] + rng.uniform(0, 1) * (b[j] - a[j])
                    gap = r_v[j] + radius * rng.uniform(0.6, 1.0)
                    center = on + _perpendicular(_unit(b[j] - a[j]), rng) * gap
                else:
                    pts = self.lung_points(1)
                    if len(pts) == 0:
                        return None
                    center = pts[0]
                probes = np.vstack([center, center + 0.9 * radius * axes])
                ok = _in_mask(self.lung, self.spacing, probes).all()
            far = all(np.linalg.norm(center - c) > radius + d / 2 + 3 for c, d, _ in taken)
            inside = np.all((center >= self.spacing) & (center <= self.extent - 2 * self.spacing))
            if ok and far and inside:
                return center
        return None

    def paint_nodule(self, center: np.ndarray, diameter: float, kind: str) -> None:
        rng, radius = self.rng, diameter / 2
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        transform = np.diag(1 / (radius * rng.uniform(0.8, 1.2, 3))) @ q.T
        n_lobes = rng.integers(0, 5) if kind != "ground_glass" else 0
        lobes = [(_perpendicular(_unit(rng.standard_normal(3)), rng) * radius * rng.uniform(0.4, 0.75),
                  radius * rng.uniform(0.3, 0.55)) for _ in range(n_lobes)]
        value = {"ground_glass": rng.uniform(-650, -350), "part_solid": rng.uniform(-600, -400),
                 "calcified": rng.uniform(250, 700)}.get(kind, rng.uniform(-20, 80))
        edge = max(self.edge, 0.35 * radius) if kind in ("ground_glass", "part_solid") else self.edge
        paint_blob(self.vol, self.spacing, center, transform, lobes, radius, value, "max", edge)
        if kind == "part_solid":
            core = radius * rng.uniform(0.35, 0.5)
            paint_blob(self.vol, self.spacing, center, np.eye(3) / core, [], core, rng.uniform(-20, 60), "max",
                       self.edge)
        if kind == "solid" and diameter >= 8 and rng.random() < 0.35:
            # Spiculation: thin strands radiating from the surface.
            dirs = _unit(rng.standard_normal((int(rng.integers(3, 9)), 3)))
            paint_tubes(self.vol, self.spacing, center + 0.7 * radius * dirs,
                        center + radius * rng.uniform(1.4, 2.2, (len(dirs), 1)) * dirs,
                        np.full(len(dirs), 0.6), np.full(len(dirs), 0.25), value, "max", self.edge)

    def place_excluded(self, count: int, taken: list) -> list[tuple[np.ndarray, float, str]]:
        """Findings LUNA16 scoring ignores: nodules under 3 mm, and some of unknown size (-1)."""
        out = []
        for _ in range(count):
            unknown = self.rng.random() < 0.3
            diameter = float(self.rng.uniform(3, 6) if unknown else self.rng.uniform(1.5, 2.9))
            center = self._nodule_site("solid", diameter / 2, taken + out)
            if center is not None:
                self.paint_nodule(center, diameter, "excluded")
                out.append((center, -1.0 if unknown else diameter, "excluded"))
        return out

    # --- candidates
    def negatives(self, n: int, avoid: list) -> list[tuple[np.ndarray, str]]:
        """``n`` negative candidate centres, mostly on structures that look like nodules."""
        counts = self.rng.multinomial(n, list(NEGATIVE_MIX.values()))
        out: list[tuple[np.ndarray, str]] = []
        for kind, want in zip(NEGATIVE_MIX, counts):
            got = np.zeros((0, 3))
            for _ in range(6):
                if len(got) >= want:
                    break
                pts = self._negative_points(kind, 2 * (want - len(got)) + 4)
                got = np.vstack([got, self._keep(pts, avoid)])
            if len(got) < want:  # structure missing in this scan: fall back to lung parenchyma
                got = np.vstack([got, self._keep(self.lung_points(4 * want + 8), avoid)])
            out += [(p, kind) for p in got[:want]]
        return out

    def _keep(self, pts: np.ndarray, avoid: list) -> np.ndarray:
        """Points inside the volume and clear of every nodule (radius + 1.5 mm)."""
        pts = np.asarray(pts).reshape(-1, 3)
        ok = np.all((pts >= 0) & (pts <= self.extent - self.spacing), axis=1)
        for center, diameter, _ in avoid:
            ok &= np.linalg.norm(pts - center, axis=1) > max(diameter, 3.0) / 2 + 1.5
        return pts[ok]

    def _negative_points(self, kind: str, m: int) -> np.ndarray:
        rng = self.rng
        a, b, r0, _ = self.vessel_segs
        if kind == "vessel" and len(a):
            w = np.linalg.norm(b - a, axis=1) * (r0 + 0.3)
            j = rng.choice(len(a), size=m, p=w / w.sum())
            return a[j] + rng.uniform(0, 1, (m, 1)) * (b[j] - a[j]) + rng.normal(0, 0.3, (m, 3)) * r0[j, None]
        if kind == "bifurcation" and len(self.forks[0]):
            j = rng.integers(0, len(self.forks[0]), m)
            return self.forks[0][j] + rng.normal(0, 0.5, (m, 3))
        if kind == "pleura":
            wall, out = self.pleura_points(m)
            return wall + out * rng.uniform(-2.0, 1.5, (len(wall), 1))
        if kind == "rib":
            ra, rb = self.rib_segments
            j = rng.integers(0, len(ra), m)
            on = ra[j] + rng.uniform(0, 1, (m, 1)) * (rb[j] - ra[j])
            inward = _unit((np.array([0, self.cy, self.cx]) - on) * [0, 1, 1])
            return on + inward * self.rib_r * rng.uniform(0.7, 1.3, (m, 1)) + rng.normal(0, 1, (m, 3))
        if kind == "mediastinum":
            which = rng.integers(0, 4, m)
            pts = np.empty((m, 3))
            dirs = _unit(rng.standard_normal((m, 3)))
            pts[:] = self.heart_center + dirs * self.heart_axes * rng.uniform(0.9, 1.1, (m, 1))
            ang = rng.uniform(0, 2 * np.pi, m)
            ring = np.stack([np.zeros(m), np.sin(ang), np.cos(ang)], 1)
            z = rng.uniform(0, self.extent[0], m)
            aorta = np.stack([z, np.full(m, self.aorta_xy[1]), np.full(m, self.aorta_xy[0])], 1)
            aorta += ring * self.aorta_r
            spine = np.stack([z, np.full(m, self.spine_y), np.full(m, self.cx)], 1) + ring * self.spine_r
            wa, wb, _, _ = (np.array(v) for v in zip(*self.airways))
            k = rng.integers(0, len(wa), m)
            airway = wa[k] + rng.uniform(0, 1, (m, 1)) * (wb[k] - wa[k]) + rng.normal(0, 4, (m, 3))
            for code, src in enumerate((aorta, spine, airway), start=1):
                pts[which == code] = src[which == code]
            return pts
        if kind == "border":
            # Within a few slices of either end of the scan, where lungs and body are cut off.
            pts = self.lung_points(m)
            pts = np.vstack([pts, np.stack([np.zeros(m), self.cy + rng.uniform(-0.8, 0.8, m) * self.body_b,
                                            self.cx + rng.uniform(-0.8, 0.8, m) * self.body_a], 1)])[:m]
            depth = rng.uniform(0, 3, len(pts)) * self.spacing[0]
            pts[:, 0] = np.where(rng.random(len(pts)) < 0.5, depth, self.extent[0] - self.spacing[0] - depth)
            return pts
        return self.lung_points(m)

"""The anatomy of one synthetic chest CT, built in memory (the core of :mod:`luna.synth.phantom`).

:class:`_Chest` draws the geometry of one scan (grid, spacing, body size) and paints body,
lungs, heart, spine, airways, ribs and branching vessel trees, then adds texture, noise and
partial-volume blur; nodules and candidates come from its :class:`_Findings` mixin
(:mod:`luna.synth.findings`). Writing files, world coordinates and flipped directions are
left to :mod:`luna.synth.phantom`, so this module is only about voxels.

Everything is built in a canonical array (index = feet->head, row = anterior->posterior,
column = right->left) with positions in "local" millimetres ``(z, y, x)`` from voxel 0.
Every random choice comes from one ``rng`` in a fixed order, so the same seed gives
byte-identical scans: reordering calls here changes the data sets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from luna.synth.findings import _Findings
from luna.synth.paint import _box, _in_mask, _perpendicular, _unit, paint_tubes, wander_segments

# The scanner's blur (z, y, x) in voxels, applied to anatomy and noise alike; an acquisition
# (:mod:`luna.synth.acquisition`) may widen it along z (thick slices) or change it in-plane (kernel).
BLUR_SIGMA_VOX = (0.7, 0.6, 0.6)


@dataclass(frozen=True)
class VesselStyle:
    """How one scan draws its vessel trees and lung texture, relative to today's (all 1 / 0).

    Other tools draw anatomy their own way: longer or shorter segments between forks, wider or
    narrower fork angles, softer vessel walls, curving vessels, more or less lumpy parenchyma.
    """

    length_factor: float = 1.0      # x the segment length between forks
    angle_factor: float = 1.0       # x both children's turn at a fork
    edge_factor: float = 1.0        # x the width of the vessel wall's partial-volume ramp
    tortuosity: float = 0.0         # sideways wander of a segment's inner points, x its length
    texture_factor: float = 1.0     # x the amplitude of the parenchyma's lumps


@dataclass(frozen=True)
class SizeSpec:
    """Ranges a scan of one size is drawn from (mm unless named otherwise)."""

    cols: tuple[int, int]
    slices: tuple[int, int]
    spacing_xy_mm: tuple[float, float]
    spacing_z_mm: tuple[float, float]
    z_extent_mm: tuple[float, float]
    body_width_mm: tuple[float, float]
    diameter_median_mm: float
    diameter_range_mm: tuple[float, float]
    vessel_min_radius_mm: float
    nodules_per_scan: tuple[int, int]
    negatives_per_positive: int
    square: bool = False
    diameter_log_sd: float = 0.45   # spread of nodule diameters around the median (log-normal)
    vessels: VesselStyle | None = None   # None: today's vessel trees, drawing nothing more


class _Chest(_Findings):
    """Builds one canonical phantom; every random choice comes from ``rng`` in a fixed order."""

    def __init__(self, spec: SizeSpec, rng: np.random.Generator):
        self.spec, self.rng = spec, rng
        self.style = spec.vessels or VesselStyle()   # today's trees unless the acquisition says otherwise
        body_w = rng.uniform(*spec.body_width_mm)
        sxy = round(float(rng.uniform(*spec.spacing_xy_mm)), 4)
        cols = int(np.clip(round(body_w * rng.uniform(1.12, 1.3) / sxy), *spec.cols))
        square = spec.square or rng.random() < 0.7
        rows = cols if square else int(round(cols * rng.uniform(0.86, 1.0)))
        sz = round(float(rng.uniform(*spec.spacing_z_mm)), 3)
        slices = int(np.clip(round(rng.uniform(*spec.z_extent_mm) / sz), *spec.slices))
        self.shape = (slices, rows, cols)
        self.spacing = np.array([sz, sxy, sxy])          # (z, y, x) mm per voxel
        self.extent = np.array(self.shape) * self.spacing
        self.edge = float(sxy)                           # surface ramp: about one pixel
        fov_y, fov_x = self.extent[1], self.extent[2]
        # Body: an ellipse near the middle of the field of view; ``scale`` shrinks the whole
        # anatomy when the field is small (the tiny size, a clipped grid).
        s = self.scale = min(body_w, 0.86 * min(fov_x, fov_y / 0.8)) / 275.0
        self.body_a = 137.5 * s
        self.body_b = self.body_a * rng.uniform(0.62, 0.75)
        self.cx = fov_x / 2 + rng.uniform(-0.02, 0.02) * fov_x
        self.cy = min(fov_y / 2 + rng.uniform(-0.02, 0.05) * fov_y, fov_y - self.body_b - 8 * s)
        self.fat = rng.uniform(6, 25) * s
        wall = rng.uniform(10, 20) * s
        self.rib_r = rng.uniform(3.5, 5.0) * s
        self.rib_a, self.rib_b = self.body_a - self.fat - wall, self.body_b - self.fat - wall
        self.cav_a, self.cav_b = self.rib_a - self.rib_r - 1, self.rib_b - self.rib_r - 1
        # Lungs along z: often cut by the ends of the scan, as in partial-coverage scans.
        self.lung_len = rng.uniform(200, 270) * s
        zc = self.extent[0] * (0.5 + rng.uniform(-0.1, 0.1))
        self.z_lo, self.z_hi = zc - self.lung_len / 2, zc + self.lung_len / 2
        self.vol = np.full(self.shape, -1000.0, dtype=np.float32)
        self.lung = np.zeros(self.shape, dtype=bool)
        self.z_mm = np.arange(slices) * sz
        self.y_mm = (np.arange(rows) * sxy)[:, None]
        self.x_mm = (np.arange(cols) * sxy)[None, :]

    # --- big anatomy, built with 2-D masks broadcast along z
    def body(self) -> None:
        rng, s = self.rng, self.scale
        dx, dy = self.x_mm - self.cx, self.y_mm - self.cy
        rho = np.hypot(dx / self.body_a, dy / self.body_b)
        inner = np.hypot(dx / (self.body_a - self.fat), dy / (self.body_b - self.fat))
        plane = np.where(rho < 1, np.where(inner < 1, 40.0, -100.0), -1000.0).astype(np.float32)
        table_y = self.cy + self.body_b + rng.uniform(2, 8) * s
        table = (self.y_mm > table_y) & (self.y_mm < table_y + 6 * s) & (abs(dx) < 0.9 * self.body_a)
        plane[table & (rho >= 1)] = rng.uniform(-400, 100)
        self.vol[:] = plane[None]

    def lungs(self) -> None:
        """Two lungs: lumpy ellipses with a concave medial side, inside the rib cage."""
        rng, s = self.rng, self.scale
        med_half = rng.uniform(0.12, 0.18) * self.cav_a
        self.lung_shapes = []
        for side in (-1, 1):
            a = (self.cav_a - med_half) / 2 * rng.uniform(1.0, 1.1)
            self.lung_shapes.append(dict(
                side=side, a=a, b=self.cav_b * rng.uniform(0.88, 1.0), cx=self.cx + side * (med_half + a),
                cy=self.cy + rng.uniform(-0.05, 0.05) * self.cav_b, eps=rng.uniform(0.0, 0.06, 3),
                phase=rng.uniform(0, 2 * np.pi, 3), medial=rng.uniform(0.1, 0.25)))
        cavity = np.hypot((self.x_mm - self.cx) / self.cav_a, (self.y_mm - self.cy) / self.cav_b) < 1
        # Spine and descending aorta sit behind the lungs; keep the lungs off them.
        self.spine_r = rng.uniform(14, 19) * s
        self.spine_y = self.cy + self.cav_b - 0.3 * self.spine_r
        self.aorta_r = rng.uniform(10, 14) * s
        self.aorta_xy = (self.cx + self.spine_r + 0.8 * self.aorta_r,
                         self.spine_y - self.spine_r - 0.2 * self.aorta_r)
        cavity &= np.hypot(self.x_mm - self.cx, self.y_mm - self.spine_y) > self.spine_r + 6 * s
        cavity &= np.hypot(self.x_mm - self.aorta_xy[0], self.y_mm - self.aorta_xy[1]) > self.aorta_r + 3 * s
        t = (self.z_mm - self.z_lo) / self.lung_len
        # Narrow apex at the top, diaphragm dome at the bottom.
        size_z = np.minimum(np.sqrt(np.clip((1 - t) / 0.3, 0, 1)), np.clip(t / 0.1, 0, 1) ** 0.5)
        for sh in self.lung_shapes:
            dx, dy = (self.x_mm - sh["cx"]) / sh["a"], (self.y_mm - sh["cy"]) / sh["b"]
            theta = np.arctan2(dy, dx)
            r_theta = 1 + sum(e * np.cos((k + 2) * theta + p)
                              for k, (e, p) in enumerate(zip(sh["eps"], sh["phase"])))
            medial_theta = 0.0 if sh["side"] < 0 else np.pi
            r_theta = r_theta - sh["medial"] * np.clip(np.cos(theta - medial_theta), 0, 1) ** 3
            rho = np.where(cavity, np.hypot(dx, dy) / r_theta, np.inf).astype(np.float32)
            self.lung |= rho[None] < size_z[:, None, None]
        self.heart()
        # Gravity makes the dependent (posterior) lung denser.
        grad = rng.uniform(30, 90)
        lung_hu = rng.uniform(-880, -830) + grad * (self.y_mm - self.cy) / self.cav_b + 0 * self.x_mm
        np.copyto(self.vol, lung_hu.astype(np.float32)[None], where=self.lung)
        # Bounding box of the lungs in mm, for rejection sampling of lung points.
        nz = [np.flatnonzero(self.lung.any(axis=tuple(k for k in range(3) if k != ax))) for ax in range(3)]
        self.lung_box = None if len(nz[0]) == 0 else (
            np.array([v[0] for v in nz]) * self.spacing, np.array([v[-1] for v in nz]) * self.spacing)

    def heart(self) -> None:
        """Heart with a pericardial fat rim, low in the chest toward the patient's left."""
        rng = self.rng
        self.heart_center = np.array([self.z_lo + rng.uniform(0.2, 0.35) * self.lung_len,
                                      self.cy - rng.uniform(0.05, 0.2) * self.cav_b,
                                      self.cx + rng.uniform(0.1, 0.25) * self.cav_a])
        self.heart_axes = np.array([rng.uniform(0.2, 0.26) * self.lung_len,
                                    rng.uniform(0.45, 0.55) * self.cav_b, rng.uniform(0.35, 0.45) * self.cav_a])
        center, axes = self.heart_center, self.heart_axes
        box, (z, y, x) = _box(center - 1.15 * axes, center + 1.15 * axes, self.spacing, self.shape)
        if box is None:
            return
        rho = np.sqrt(((z - center[0]) / axes[0]) ** 2 + ((y - center[1]) / axes[1]) ** 2
                      + ((x - center[2]) / axes[2]) ** 2)
        self.lung[box] &= rho > 1.1
        self.vol[box] = np.where(rho < 1.0, 40.0, np.where(rho < 1.08, -90.0, self.vol[box]))

    def spine_and_mediastinum(self) -> None:
        """Vertebrae (cortex, marrow, discs, canal in a bony arch), trachea and main bronchi."""
        rng, s = self.rng, self.scale
        r = np.hypot(self.x_mm - self.cx, self.y_mm - self.spine_y)
        rc = np.hypot(self.x_mm - self.cx, self.y_mm - (self.spine_y + self.spine_r + 8 * s))
        period, disc = rng.uniform(24, 30) * s, rng.uniform(5, 8) * s
        is_disc = ((self.z_mm + rng.uniform(0, period)) % period) < disc
        marrow, cortex = rng.uniform(180, 300), rng.uniform(600, 900)
        # NaN marks "not spine" so one masked copy paints every slice.
        vert = np.where(r < self.spine_r - 2 * s, marrow, np.where(r < self.spine_r, cortex, np.nan))
        arch = np.where(rc < 7 * s, 15.0, np.where(rc < 11 * s, cortex, np.nan))
        bone = np.where(np.isnan(vert), arch, vert).astype(np.float32)
        disc_plane = np.where(r < self.spine_r, 80.0, arch).astype(np.float32)
        planes = np.where(is_disc[:, None, None], disc_plane[None], bone[None])
        np.copyto(self.vol, planes, where=~np.isnan(planes))
        trachea_r = rng.uniform(7, 10) * s
        self.carina = np.array([self.z_lo + rng.uniform(0.6, 0.7) * self.lung_len,
                                self.spine_y - self.spine_r - trachea_r - 5 * s, self.cx])
        self.airways = [(self.carina, self.carina + [self.extent[0], 0, 0], trachea_r, trachea_r)]
        for sh in self.lung_shapes:
            hilum = np.array([self.carina[0] - rng.uniform(15, 25) * s, sh["cy"],
                              sh["cx"] - sh["side"] * 0.45 * sh["a"]])
            self.airways.append((self.carina, hilum, 0.7 * trachea_r, 0.6 * trachea_r))

    def paint_airways(self) -> None:
        """Air-filled tubes with a soft-tissue wall (trachea, bronchi)."""
        a, b, ra, rb = (np.array(v) for v in zip(*self.airways))
        wall = 1.2 * self.scale + 0.3 * self.edge
        paint_tubes(self.vol, self.spacing, a, b, ra + wall, rb + wall, 30.0, "max", self.edge)
        paint_tubes(self.vol, self.spacing, a, b, ra, rb, -1000.0, "set", self.edge)

    def ribs(self) -> None:
        """Ribs: arcs from the spine round the side to the front, sloping down anteriorly,
        so an axial slice cuts each one into a short bright arc."""
        rng, s = self.rng, self.scale
        pitch, drop = rng.uniform(22, 28) * s, rng.uniform(2.0, 3.5)
        cortex, marrow, cartilage = rng.uniform(700, 1000), rng.uniform(150, 300), rng.uniform(100, 200)
        starts, ends, front = [], [], []
        z0 = self.z_hi + 20 * s
        while z0 > -drop * pitch * 2:
            for side in (-1, 1):
                phi = np.linspace(0.3, rng.uniform(2.2, 2.6), 15)   # angle from the back
                z = z0 + rng.uniform(-3, 3) * s - drop * pitch * (phi - phi[0]) / (phi[-1] - phi[0])
                pts = np.stack([z, self.cy + self.rib_b * np.cos(phi),
                                self.cx + side * self.rib_a * np.sin(phi)], 1)
                starts.append(pts[:-1])
                ends.append(pts[1:])
                front.append(phi[1:] > 2.1)                          # costal cartilage
            z0 -= pitch
        a, b, front = np.concatenate(starts), np.concatenate(ends), np.concatenate(front)
        bone, r = ~front, np.full(len(a), self.rib_r)
        inner = np.maximum(r - 1.2 * s, 0.5)
        for keep, radius, value, mode in ((bone, r, cortex, "max"), (bone, inner, marrow, "set"),
                                          (front, r, cartilage, "max")):
            paint_tubes(self.vol, self.spacing, a[keep], b[keep], radius[keep], radius[keep], value, mode, self.edge)
        self.rib_segments = (a, b)

    # --- vessel trees (and the bronchi that run beside their trunks)
    def vessels(self) -> None:
        """Grow eight trees per lung (arteries and veins) from the hilum outward.

        Each segment tapers; at its end it forks into two children whose radii follow
        Murray's law (r^3 = r1^3 + r2^3), the thinner child turning more. A branch stops when
        it is thinner than the scan resolves or would leave the lung.
        """
        rng, s, r_min = self.rng, self.scale, self.spec.vessel_min_radius_mm
        style = self.style
        segs, forks = [], []
        for sh in self.lung_shapes:
            guess = np.array([self.carina[0] - 20 * s, sh["cy"], sh["cx"] - sh["side"] * 0.4 * sh["a"]])
            hilum = self._into_lung(guess, np.array([0.0, sh["cy"], sh["cx"]]))
            if hilum is None:
                continue
            lat = sh["side"]
            mid = np.array([(self.z_lo + self.z_hi) / 2, sh["cy"], sh["cx"] + 0.2 * lat * sh["a"]])
            # Roots fan out from the hilum: up, down, sideways, front and back; the lower ones are veins.
            roots = [(0.9, 0.1, 0.4), (0.6, -0.5, 0.6), (0.5, 0.6, 0.6), (0.0, -0.6, 1.0), (0.0, 0.6, 1.0),
                     (-0.6, -0.5, 0.6), (-0.9, 0.3, 0.4), (-0.6, 0.7, 0.6)]
            for k, (dz, dy, dx) in enumerate(roots):
                d = _unit(np.array([dz, dy, dx * lat]) + rng.normal(0, 0.15, 3))
                start = hilum + [0 if k < 5 else -12 * s, 0, 0]
                stack = [(start, d, rng.uniform(2.0, 3.5), 0)]
                while stack and len(segs) < 12000:
                    p, d, r, depth = stack.pop()
                    length = (r * rng.uniform(6, 10) + 3 * s) * style.length_factor
                    # A branch heading out of the lung bends back toward the middle before giving up.
                    for bend in (0.0, 0.6, 1.5):
                        d = _unit(d + bend * _unit((mid - p) * [0.3, 1, 1]))
                        end = p + d * length * (1 - 0.25 * (bend > 0))
                        if _in_mask(self.lung, self.spacing, np.stack([end, (p + end) / 2])).all():
                            break
                    else:
                        continue
                    r_end = 0.95 * r
                    segs.append((p, end, r, r_end, depth))
                    r1 = r_end * rng.uniform(0.8, 0.92)
                    r2 = (r_end ** 3 - r1 ** 3) ** (1 / 3)
                    u, out = _perpendicular(d, rng), _unit(end - hilum)
                    a1, a2 = (np.radians(rng.uniform(*turn) * style.angle_factor)
                              for turn in ((10, 30), (30, 60)))
                    children = [(r1, _unit(np.cos(a1) * d + np.sin(a1) * u + 0.25 * out)),
                                (r2, _unit(np.cos(a2) * d - np.sin(a2) * u + 0.25 * out))]
                    pushed = [(end, cd, cr, depth + 1) for cr, cd in children if cr >= r_min]
                    if len(pushed) == 2:
                        forks.append((end, r_end))
                    stack.extend(pushed)
        if not segs:
            self.vessel_segs = (np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))
            self.forks = (np.zeros((0, 3)), np.zeros(0))
            return
        a, b, r0, r1, depth = (np.array(v) for v in zip(*segs))
        # Blood is ~40 HU; about one scan in five was taken with contrast and has bright vessels.
        blood = rng.uniform(150, 300) if rng.random() < 0.2 else rng.uniform(20, 60)
        pa, pb, pr0, pr1 = (wander_segments(a, b, r0, r1, style.tortuosity, rng) if style.tortuosity
                            else (a, b, r0, r1))
        paint_tubes(self.vol, self.spacing, pa, pb, pr0, pr1, float(blood), "max", self.edge * style.edge_factor)
        self.vessel_segs = (pa, pb, pr0, pr1)
        self.forks = (np.array([f[0] for f in forks]).reshape(-1, 3), np.array([f[1] for f in forks]))
        # Lobar bronchi: air tubes with a wall, running beside the first two vessel generations.
        for p, q, r, _, dep in zip(a, b, r0, r1, depth):
            if dep <= 1:
                off = _perpendicular(_unit(q - p), rng) * (1.8 * r + 1.5)
                if _in_mask(self.lung, self.spacing, np.stack([p + off, q + off])).all():
                    self.airways.append((p + off, q + off, 0.7 * r, 0.6 * r))

    def _into_lung(self, point: np.ndarray, toward: np.ndarray) -> np.ndarray | None:
        """First point on the way from ``point`` to ``toward`` (x/y only) that lies in the lung."""
        target = np.array([point[0], toward[1], toward[2]])
        steps = np.linspace(0, 1, 60)[:, None]
        path = point + steps * (target - point)
        hits = np.flatnonzero(_in_mask(self.lung, self.spacing, path))
        return path[hits[0]] if len(hits) else None

    # --- texture, partial volume and noise
    def finish(self, blur_sigma_vox: tuple[float, float, float] = BLUR_SIGMA_VOX, noise_factor: float = 1.0,
               hu_offset: float = 0.0) -> np.ndarray:
        """Lung texture, correlated scanner noise, partial-volume blur; returns int16 HU.

        Args:
            blur_sigma_vox: the reconstruction's blur (z, y, x) in voxels: slice profile and kernel.
            noise_factor: noise standard deviation relative to the scan's drawn one.
            hu_offset: calibration error added to every measured voxel (HU).

        The defaults are today's scans, unchanged: they draw nothing more from ``rng``.
        """
        rng = self.rng
        nz = [np.flatnonzero(self.lung.any(axis=tuple(k for k in range(3) if k != ax))) for ax in range(3)]
        if all(len(v) for v in nz):
            # Lumpy parenchyma: smooth noise on a ~4 mm grid, interpolated up inside the lungs' box.
            box = tuple(slice(v[0], v[-1] + 1) for v in nz)
            box_shape = np.array([s.stop - s.start for s in box])
            coarse_shape = np.maximum(np.ceil(box_shape * self.spacing / 4.0).astype(int), 2)
            coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), 1.0)
            coarse *= rng.uniform(15, 35) * self.style.texture_factor / max(float(coarse.std()), 1e-6)
            lumps = ndimage.zoom(coarse, box_shape / coarse_shape, order=1, grid_mode=True, mode="nearest")
            lumps = lumps[: box_shape[0], : box_shape[1], : box_shape[2]]
            np.add(self.vol[box], lumps, out=self.vol[box], where=self.lung[box])
        # White noise blurred by the same kernel as the anatomy is correlated like real CT noise;
        # the gain of the kernel is divided out so the final standard deviation is what we chose.
        gain = 1.0
        for sig in blur_sigma_vox:
            impulse = np.zeros(31)
            impulse[15] = 1
            gain *= float(np.sqrt((ndimage.gaussian_filter1d(impulse, sig) ** 2).sum()))
        sd_tissue, sd_lung = rng.uniform(10, 30), rng.uniform(20, 60)
        noise = rng.standard_normal(self.shape, dtype=np.float32)
        noise *= np.float32(noise_factor * sd_tissue / gain)
        np.multiply(noise, np.float32(np.hypot(sd_tissue, sd_lung) / sd_tissue), out=noise, where=self.lung)
        self.vol += noise
        del noise
        ndimage.gaussian_filter(self.vol, blur_sigma_vox, output=self.vol)
        if hu_offset:
            self.vol += np.float32(hu_offset)   # before the fill below: that is a stored constant
        if rng.random() < 0.4:
            # Many scanners store a fixed value outside the circular reconstruction field.
            radius = min(self.extent[1], self.extent[2]) / 2
            outside = np.hypot(self.x_mm - self.extent[2] / 2, self.y_mm - self.extent[1] / 2) > radius
            self.vol[:, outside] = rng.choice([-2048.0, -3024.0, -2000.0])
        np.rint(self.vol, out=self.vol)
        np.clip(self.vol, -3024, 3071, out=self.vol)
        return self.vol.astype(np.int16)

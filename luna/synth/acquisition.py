"""How a synthetic scan was acquired: slice spacing and profile, pixel, kernel, HU calibration.

Real archives mix scanners: LUNA16 alone holds 0.6-2.5 mm slices, pixels of 0.5-1.0 mm, smooth
and sharp reconstruction kernels and scanners whose air is not quite -1000 HU. A model that
saw one acquisition only learns that one; :func:`luna.synth.make_dataset` can therefore draw
each scan's acquisition from a preset (``luna synth --acquisition``):

``default``
    Today's scans, byte for byte: no preset, nothing is drawn (see :data:`PRESETS`).
``varied`` (:data:`VARIED`), each scan drawn independently:

    - slice spacing 0.6-3.0 mm, log-uniform (thin and thick series equally common); slice
      thickness 1.0-2.0 x the spacing (overlapping reconstructions such as 1.25 mm at 0.625 mm);
    - pixel 0.73-1.33 x the size's typical pixel, log-uniform: 0.55-1.0 mm for ``full`` (real
      scanners), 1.03-1.87 mm for ``small`` (a half-resolution LUNA16, as its default 1.2-1.6 mm
      is), 2.16-3.93 mm for ``tiny``. Grids keep their size's pixel counts (small: 160-224), so
      a fine pixel means a smaller field of view, into which the anatomy is scaled down;
    - kernel: noise standard deviation x0.5-x2.5 of today's, log-uniform; sharper kernels are
      the noisier ones, in-plane blur 0.6 px / sqrt(noise factor) (0.85 px smooth .. 0.38 px sharp);
    - HU calibration offset -30..+30 HU added to every voxel (not to the fill value outside a
      circular reconstruction field, which is a stored constant);
    - body width x0.85-1.15, smallest vessel radius x0.8-1.5 (denser or sparser vessel trees);
    - nodule diameters as in LUNA16: log-normal, median 6 mm, log-sd 0.55 (about half under
      6 mm), clipped to the size's range (3-30 mm; tiny 5-20 mm, whose 3 mm voxels cannot
      show a 3 mm nodule). Ground-glass and part-solid nodules stay 1.3x larger, as by default.

``mixed``, training data that holds better on other scanners: the default scans with every
    third one (index 2, 5, 8...) drawn as a ``varied`` scan. The default scans are byte for byte
    those of ``default`` at the same index. A model trained on 48 such scans scored better on
    thick-slice and sharp-kernel scans than one trained on the 32 default scans, and within the
    noise in distribution (docs/experiments.md).

``shifted`` (:data:`SHIFTED`), for a held-out test set unlike the default's scans:

    - slice spacing 2.5-3.0 mm, thickness 1.5 x the spacing (thick, blurred slices);
    - a sharp, noisy kernel: noise x2, in-plane blur 0.42 px;
    - HU offset -30..+30 HU;
    - pixel from the size's own range; body, vessels and nodule sizes as by default, so that
      only the acquisition differs.

``shifted-anatomy`` (:data:`SHIFTED_ANATOMY`), a held-out set of other anatomy: another tool
    draws vessels and lungs its own way, and a model that learned luna's own vessels may take
    that tool's for nodules. Acquisition as by default (slices from the size's own range, as thick
    as their spacing; today's noise and kernel; no HU offset); the vessel trees and the lung
    texture (:class:`~luna.synth.anatomy.VesselStyle`) unlike every other preset's:

    - segments 0.45-0.5 x today's length between forks (bushy trees that stay near the hilum);
    - forks turning 1.7-1.8 x as far; vessel walls with a partial-volume ramp 3-3.2 x as wide;
    - curving vessels: each segment's two inner joints move sideways by 0.35-0.4 x its length;
    - parenchyma lumps 2.5-2.7 x as strong.

The slice profile: today's scans are blurred along z by a 0.7-voxel Gaussian, taken here as
the profile of a slice as thick as its spacing; a slice ``f`` times thicker widens it to
``0.7 f`` voxels (partial volume of thick slices). Thin slices get more of them, so that a
scan still covers the chest: a spacing below the size's smallest multiplies its slice count
range by that ratio (small at 0.6 mm: 167-292 slices, up to ~2x today's largest volume;
full: 292-408).

Every acquisition draw comes from a generator of its own (seed, scan index and the preset's
``key``), never from the anatomy's stream, which keeps its order; the series uid is drawn there
too, so that a varied scan does not share its uid with the default or shifted scan of the same
seed and index (caches are keyed by uid).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from luna.errors import UsageError
from luna.luna16.csvfiles import write_table
from luna.synth.anatomy import BLUR_SIGMA_VOX, SizeSpec, VesselStyle

ACQUISITION_CSV = "acquisition.csv"
ACQUISITION_COLUMNS = ("seriesuid", "acquisition", "spacing_z_mm", "slice_thickness_mm", "pixel_mm",
                       "noise_factor", "kernel_sigma_px", "hu_offset", "vessel_length_factor", "fork_angle_factor",
                       "vessel_edge_factor", "tortuosity", "texture_factor")

# Real scanners' pixels spread from 0.55 to 1.0 mm around LUNA16's typical 0.75 mm; a size's
# pixels spread by the same factors around its own typical pixel.
_PIXEL_FACTOR = (0.55 / 0.75, 1.0 / 0.75)


@dataclass(frozen=True)
class Acquisition:
    """Ranges a scan's acquisition is drawn from; ``(lo, hi)`` pairs, equal ends for a fixed value.

    Spacing, pixel and noise factor, which act as scales, are drawn log-uniformly, the rest
    uniformly. ``None`` keeps the size's own range (slice spacing, pixel) or distribution (nodule
    diameters).
    """

    name: str
    key: int                                   # picks the preset's own random stream
    spacing_z_mm: tuple[float, float] | None   # None: the size's own range
    thickness_factor: tuple[float, float]      # slice thickness / slice spacing, >= 1
    noise_factor: tuple[float, float]          # x today's noise standard deviation
    hu_offset: tuple[float, float]
    pixel_factor: tuple[float, float] | None = None   # x the size's typical pixel
    body_factor: tuple[float, float] = (1.0, 1.0)
    vessel_radius_factor: tuple[float, float] = (1.0, 1.0)
    nodule_median_mm: float | None = None
    nodule_log_sd: float = 0.45
    # The vessel trees' style (:class:`VesselStyle`) as (low, high) ends; None: today's trees,
    # nothing drawn. The factors are drawn log-uniformly, angle and tortuosity uniformly.
    vessel_style: tuple[VesselStyle, VesselStyle] | None = None

    def draw(self, rng: np.random.Generator, spec: SizeSpec) -> ScanAcquisition:
        """One scan's settings; rounded as the chest rounds them, so the CSV shows what was used."""
        spacing_z = round(_log_uniform(rng, self.spacing_z_mm or spec.spacing_z_mm), 3)
        if self.pixel_factor is None:
            pixel = float(rng.uniform(*spec.spacing_xy_mm))
        else:
            typical = sum(spec.spacing_xy_mm) / 2
            pixel = typical * _log_uniform(rng, self.pixel_factor)
        noise = round(_log_uniform(rng, self.noise_factor), 3)
        return ScanAcquisition(
            name=self.name, spacing_z_mm=spacing_z, pixel_mm=round(pixel, 4),
            slice_thickness_mm=round(spacing_z * float(rng.uniform(*self.thickness_factor)), 3),
            noise_factor=noise, kernel_sigma_px=round(BLUR_SIGMA_VOX[2] / math.sqrt(noise), 3),
            hu_offset=round(float(rng.uniform(*self.hu_offset)), 1),
            body_factor=float(rng.uniform(*self.body_factor)),
            vessel_radius_factor=float(rng.uniform(*self.vessel_radius_factor)),
            nodule_median_mm=self.nodule_median_mm, nodule_log_sd=self.nodule_log_sd,
            vessels=self._draw_style(rng))

    def _draw_style(self, rng: np.random.Generator) -> VesselStyle | None:
        """The scan's vessel style; drawn last, so the settings above stay as they were."""
        if self.vessel_style is None:
            return None
        low, high = self.vessel_style

        def draw(field: str, log: bool) -> float:
            bounds = (getattr(low, field), getattr(high, field))
            return round(_log_uniform(rng, bounds) if log else float(rng.uniform(*bounds)), 3)

        # In this order: the stream gives each field the draw it always had.
        return VesselStyle(length_factor=draw("length_factor", True), angle_factor=draw("angle_factor", False),
                           edge_factor=draw("edge_factor", True), tortuosity=draw("tortuosity", False),
                           texture_factor=draw("texture_factor", True))


@dataclass(frozen=True)
class ScanAcquisition:
    """What one scan was acquired with (a row of ``acquisition.csv``)."""

    name: str
    spacing_z_mm: float
    slice_thickness_mm: float
    pixel_mm: float
    noise_factor: float
    kernel_sigma_px: float
    hu_offset: float
    body_factor: float
    vessel_radius_factor: float
    nodule_median_mm: float | None
    nodule_log_sd: float
    vessels: VesselStyle | None = None

    def size_spec(self, spec: SizeSpec) -> SizeSpec:
        """``spec`` narrowed to this scan: the chest then draws exactly these values.

        Fixed values go in as ``(v, v)`` ranges, which the chest still draws from (uniform on
        ``(v, v)`` is ``v``), so its random stream keeps its order and the anatomy stays as
        varied as by default.
        """
        more = max(1.0, spec.spacing_z_mm[0] / self.spacing_z_mm)   # thin slices: keep the coverage
        body = tuple(v * self.body_factor for v in spec.body_width_mm)
        narrowed = replace(spec, spacing_z_mm=(self.spacing_z_mm,) * 2, spacing_xy_mm=(self.pixel_mm,) * 2,
                           slices=(round(spec.slices[0] * more), round(spec.slices[1] * more)),
                           body_width_mm=body,
                           vessel_min_radius_mm=spec.vessel_min_radius_mm * self.vessel_radius_factor,
                           vessels=self.vessels)
        if self.nodule_median_mm is None:
            return narrowed
        return replace(narrowed, diameter_median_mm=self.nodule_median_mm, diameter_log_sd=self.nodule_log_sd)

    def finish_args(self) -> tuple[tuple[float, float, float], float, float]:
        """What the chest's ``finish`` takes: the reconstruction's blur (z, y, x) in voxels (slice
        profile along z, kernel in-plane), the noise factor and the HU offset."""
        thickness = self.slice_thickness_mm / self.spacing_z_mm
        blur = (BLUR_SIGMA_VOX[0] * thickness, self.kernel_sigma_px, self.kernel_sigma_px)
        return blur, self.noise_factor, self.hu_offset

    def row(self, uid: str) -> list[str]:
        """The cells of its ``acquisition.csv`` row (:data:`ACQUISITION_COLUMNS`)."""
        style = self.vessels or VesselStyle()
        return [uid, self.name, f"{self.spacing_z_mm:.3f}", f"{self.slice_thickness_mm:.3f}", f"{self.pixel_mm:.4f}",
                f"{self.noise_factor:.3f}", f"{self.kernel_sigma_px:.3f}", f"{self.hu_offset:.1f}",
                *(f"{v:.3f}" for v in (style.length_factor, style.angle_factor, style.edge_factor, style.tortuosity,
                                       style.texture_factor))]


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """Log-uniform on ``bounds``: as many draws in 0.6-1.34 mm as in 1.34-3.0 mm."""
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


VARIED = Acquisition(
    name="varied", key=1, spacing_z_mm=(0.6, 3.0), thickness_factor=(1.0, 2.0), noise_factor=(0.5, 2.5),
    hu_offset=(-30.0, 30.0), pixel_factor=_PIXEL_FACTOR,
    body_factor=(0.85, 1.15), vessel_radius_factor=(0.8, 1.5), nodule_median_mm=6.0, nodule_log_sd=0.55)
SHIFTED = Acquisition(
    name="shifted", key=2, spacing_z_mm=(2.5, 3.0), thickness_factor=(1.5, 1.5), noise_factor=(2.0, 2.0),
    hu_offset=(-30.0, 30.0))
# Today's acquisition, the vessel trees and lung texture drawn as no other preset draws them.
SHIFTED_ANATOMY = Acquisition(
    name="shifted-anatomy", key=3, spacing_z_mm=None, thickness_factor=(1.0, 1.0), noise_factor=(1.0, 1.0),
    hu_offset=(0.0, 0.0),
    vessel_style=(VesselStyle(length_factor=0.45, angle_factor=1.7, edge_factor=3.0, tortuosity=0.35, texture_factor=2.5),
                  VesselStyle(length_factor=0.5, angle_factor=1.8, edge_factor=3.2, tortuosity=0.4, texture_factor=2.7)))
# "default" has no preset: its scans draw nothing more than they always did.
PRESETS: dict[str, Acquisition | None] = {"default": None, "varied": VARIED, "shifted": SHIFTED,
                                           "shifted-anatomy": SHIFTED_ANATOMY}
# "mixed" is no preset of its own but default and varied scans in turn: one in MIXED_EVERY is varied.
MIXED_EVERY = 3
ACQUISITIONS = (*PRESETS, "mixed")


def check_acquisition(name: str) -> str:
    """``name`` if it is one of :data:`ACQUISITIONS`; a UsageError names the choices."""
    if name not in ACQUISITIONS:
        raise UsageError(f"unknown acquisition {name!r}; choose one of {', '.join(ACQUISITIONS)}")
    return name


def scan_preset(name: str, index: int) -> Acquisition | None:
    """The preset that scan ``index`` of a ``name`` data set is drawn from (None: a default scan)."""
    if check_acquisition(name) == "mixed":
        return VARIED if index % MIXED_EVERY == MIXED_EVERY - 1 else None
    return PRESETS[name]


def default_acquisition(spec: SizeSpec, spacing_zyx_mm: tuple[float, float, float]) -> ScanAcquisition:
    """What a default scan of ``spec`` on this grid was acquired with, as a row of
    ``acquisition.csv`` says it: slices as thick as their spacing, today's noise and kernel, no HU
    offset, the size's own nodule sizes."""
    return ScanAcquisition(
        name="default", spacing_z_mm=float(spacing_zyx_mm[0]), slice_thickness_mm=float(spacing_zyx_mm[0]),
        pixel_mm=float(spacing_zyx_mm[1]), noise_factor=1.0, kernel_sigma_px=float(BLUR_SIGMA_VOX[2]),
        hu_offset=0.0, body_factor=1.0, vessel_radius_factor=1.0, nodule_median_mm=None,
        nodule_log_sd=spec.diameter_log_sd)


def acquisition_rng(seed: int, index: int, preset: Acquisition) -> np.random.Generator:
    """The preset's own stream for scan ``index``: apart from the anatomy's, and from other presets'."""
    return np.random.default_rng([seed, index, 1, preset.key])


def write_acquisition_csv(path: Path, uids: list[str], drawn: list[ScanAcquisition]) -> int:
    """Write ``acquisition.csv`` (one row a scan, in series order: a table of scans, not of
    findings, so unshuffled); returns its size in bytes. No luna command reads it: scans are
    found by their suffix and the LUNA16 CSVs by their names, so a data dir may hold it."""
    return write_table(path, ACQUISITION_COLUMNS, [d.row(uid) for uid, d in zip(uids, drawn)]).stat().st_size

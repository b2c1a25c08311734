"""Synthetic chest CT scans and candidate lists in the exact LUNA16 layout.

The phantom is chest-like on purpose, so that telling nodules from the rest is a real task:
a body with subcutaneous fat, two textured lungs, ribs, spine, heart, aorta, trachea and
bronchi, branching vessel trees that taper toward the periphery (a vessel cut across looks
like a nodule), and nodules of 3-30 mm that are solid, ground-glass, part-solid, calcified,
stuck to the chest wall or lying against a vessel. Most negative candidates are *hard*:
vessels, bifurcations, pleura, rib edges, mediastinum.

Geometry varies between scans (grid size, spacing, origin, direction with flipped axes), so
nothing downstream may rely on a fixed grid or ignore the direction matrix.

Stable API (tests and benchmarks of other modules rely on it)::

    from luna.synth import make_dataset
    summary = make_dataset(tmp_path / "luna", n_series=3, size="tiny")
    summary.series_uids, summary.n_positive, summary.candidates_csv, ...

    scan = generate_scan(seed=0, index=0, size="tiny")   # in memory, nothing written
    scan.hu, scan.lung_mask, scan.nodules, scan.candidates, scan.origin_xyz, ...

Sizes (``SIZES``):

- ``tiny``: about 64 x 64 x 40 voxels (~3 mm pixels), 1-3 nodules and about 12 negatives
  per positive (~20-40 negatives a scan); well under a second a scan. For unit tests.
- ``small`` (the app's default): 160-224 pixels at 1.2-1.6 mm, 80-140 slices of 1.25-2.5 mm;
  4-8 nodules and 150 negatives per positive. Nodules keep their size in mm, so small ones
  are a few voxels wide, as in thick-slice scans.
- ``full``: 512 x 512 x 250-350 at 0.6-0.9 mm pixels, like LUNA16 itself; for benchmarks.

Written layout: ``subset0..subset9/<uid>.mhd`` + ``.raw`` (int16 HU, series spread round-robin
over the subsets), ``annotations.csv``, ``candidates.csv`` and ``annotations_excluded.csv``
with the LUNA16 headers, rows shuffled, coordinates in world millimetres. The same seed gives
byte-identical files; scan ``i`` depends only on ``(seed, i)``. ``scan_format`` "nifti" writes
``<uid>.nii.gz`` instead, "dicom" a folder ``<uid>/`` of one CT file per slice (HU through the
rescale tags); the voxels, geometry and CSVs are the same in each.

``acquisition`` "varied" draws each scan's slice spacing and thickness, pixel, kernel and HU
calibration from wide ranges, "shifted" makes thick-slice, sharp-kernel scans for a held-out
test, "shifted-anatomy" one of vessel trees and lungs drawn another way, "mixed" makes every
third scan a varied one; each writes ``acquisition.csv`` too (see
:mod:`luna.synth.acquisition`). The default draws nothing more: its files are byte-identical
to those made before the option existed.

Internally everything is built in a canonical array (index = feet->head, row =
anterior->posterior, column = right->left) with positions in "local" millimetres
``(z, y, x)`` from voxel 0; flipped directions are applied only when storing.

Modules: this one is the public API, the size table and writing data sets; one scan's voxels
are built by :mod:`luna.synth.anatomy` (body, lungs, bones, vessels, noise) with
:mod:`luna.synth.findings` (nodules, candidates), both painting with :mod:`luna.synth.paint`;
:mod:`luna.synth.acquisition` draws a non-default acquisition. Imports point only that way.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from luna.errors import UsageError
from luna.io.writers import SCAN_FORMATS, scan_name, write_image
from luna.luna16.csvfiles import ANNOTATION_COLUMNS, CANDIDATE_COLUMNS, write_table
from luna.luna16.geometry import XyzTuple, irc2xyz
from luna.synth.acquisition import (ACQUISITION_CSV, ScanAcquisition, acquisition_rng, check_acquisition,
                                    default_acquisition, scan_preset, write_acquisition_csv)
from luna.synth.anatomy import SizeSpec, _Chest

log = logging.getLogger(__name__)

UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
N_SUBSETS = 10

# Directions seen in the wild besides identity; each flips axes of the stored array.
FLIPPED_DIRECTIONS = ((1, 1, -1), (-1, -1, 1), (-1, 1, 1), (-1, -1, -1))


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec((60, 68), (36, 44), (2.7, 3.2), (2.0, 2.5), (80, 110), (160, 185),
                     9.0, (5.0, 20.0), 1.0, (1, 3), 12),
    "small": SizeSpec((160, 224), (80, 140), (1.2, 1.6), (1.25, 2.5), (200, 330), (250, 300),
                      7.0, (3.0, 30.0), 0.5, (4, 8), 150),
    "full": SizeSpec((512, 512), (250, 350), (0.6, 0.9), (0.7, 2.5), (280, 380), (250, 300),
                     7.0, (3.0, 30.0), 0.4, (4, 8), 150, square=True),
}


@dataclass(frozen=True)
class Finding:
    """A nodule or an excluded finding, as an annotation row. ``diameter_mm`` -1: unknown."""

    center_xyz: XyzTuple
    diameter_mm: float
    kind: str


@dataclass(frozen=True)
class Candidate:
    """A candidates.csv row; ``kind`` says what it was placed on (nodule, vessel, rib...)."""

    center_xyz: XyzTuple
    label: int
    kind: str


@dataclass
class SynthScan:
    """One generated scan, exactly as it is stored (array in IRC order, world geometry)."""

    uid: str
    hu: np.ndarray
    lung_mask: np.ndarray
    origin_xyz: tuple[float, float, float]
    spacing_xyz: tuple[float, float, float]
    direction: tuple[float, ...]
    nodules: list[Finding]
    excluded: list[Finding]
    candidates: list[Candidate]
    acquisition: ScanAcquisition | None = None   # None: the default acquisition


@dataclass
class SynthSummary:
    """What :func:`make_dataset` wrote."""

    out_dir: Path
    series_uids: list[str]
    n_annotations: int
    n_excluded: int
    n_positive: int
    n_negative: int
    bytes_written: int
    seconds: float
    annotations_csv: Path
    candidates_csv: Path
    excluded_csv: Path
    scan_paths: list[Path] = field(default_factory=list)
    acquisition_csv: Path | None = None   # written for the "varied" and "shifted" acquisitions

    @property
    def negatives_per_positive(self) -> float:
        return self.n_negative / max(self.n_positive, 1)


# --------------------------------------------------------------------------- one scan

def make_uid(rng: np.random.Generator) -> str:
    """A DICOM-style series uid: the LIDC prefix and 30 random digits (no leading zero)."""
    digits = [int(rng.integers(1, 10))] + [int(d) for d in rng.integers(0, 10, 29)]
    return UID_PREFIX + "".join(map(str, digits))


def _resolve(size: str, nodules_per_scan, negatives_per_positive) -> tuple[SizeSpec, tuple[int, int], int]:
    if size not in SIZES:
        raise UsageError(f"unknown phantom size {size!r}; choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    nodules = tuple(nodules_per_scan) if nodules_per_scan is not None else spec.nodules_per_scan
    ratio = spec.negatives_per_positive if negatives_per_positive is None else int(negatives_per_positive)
    if len(nodules) != 2 or not 0 <= nodules[0] <= nodules[1]:
        raise UsageError(f"nodules per scan must be MIN MAX with 0 <= MIN <= MAX, got {nodules_per_scan!r}")
    if ratio < 0:
        raise UsageError(f"negatives_per_positive must be >= 0, got {ratio}")
    return spec, nodules, ratio


def generate_scan(seed: int = 0, index: int = 0, size: str = "tiny",
                  nodules_per_scan: tuple[int, int] | None = None,
                  negatives_per_positive: int | None = None, acquisition: str = "default") -> SynthScan:
    """Make scan number ``index`` of the data set for ``seed``, in memory.

    Args:
        seed: data set seed; scan ``index`` depends only on (seed, index, acquisition).
        index: position of the scan in the data set. Every fourth scan (index 1, 5, 9...) has a
            direction matrix with flipped axes.
        size: "tiny", "small" or "full" (see ``SIZES``).
        nodules_per_scan: (min, max) nodules, inclusive; default from the size.
        negatives_per_positive: negatives drawn per positive candidate; default from the size.
        acquisition: "default", "varied", "shifted" or "mixed" (see :mod:`luna.synth.acquisition`).

    Returns:
        The scan as stored (int16 HU in IRC order, world geometry) and its findings/candidates.
    """
    spec, (n_lo, n_hi), ratio = _resolve(size, nodules_per_scan, negatives_per_positive)
    preset = scan_preset(acquisition, index)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    uid = make_uid(rng)
    drawn = None
    if preset is not None:
        # A stream of its own, so that ``rng`` and with it every default scan stays as it was.
        acq_rng = acquisition_rng(seed, index, preset)
        uid, drawn = make_uid(acq_rng), preset.draw(acq_rng, spec)
        spec = drawn.size_spec(spec)
    chest = _Chest(spec, rng)
    chest.body()
    chest.lungs()
    chest.spine_and_mediastinum()
    chest.vessels()
    chest.paint_airways()
    nodules = chest.place_nodules(int(rng.integers(n_lo, n_hi + 1)))
    for center, diameter, kind in nodules:
        chest.paint_nodule(center, diameter, kind)
    excluded = chest.place_excluded(int(rng.integers(0, 2 if size == "tiny" else 4)), nodules)
    chest.ribs()
    # Candidates are chosen before noise so they depend on the anatomy only.
    positives = []
    for center, diameter, _ in nodules:
        for _ in range(1 + int(rng.random() < 0.25)):
            jitter = rng.uniform(-1, 1, 3) * 0.8 * diameter / 4   # inside the d/4 matching box
            positives.append(np.clip(center + jitter, 0, chest.extent - chest.spacing))
    n_neg = int(round(ratio * len(positives) * rng.uniform(0.85, 1.15)))
    negatives = chest.negatives(n_neg, nodules + excluded)
    negatives += [(c + rng.normal(0, 0.5, 3), "excluded") for c, _, _ in excluded]
    hu = chest.finish() if drawn is None else chest.finish(*drawn.finish_args())
    if drawn is None and acquisition != "default":
        drawn = default_acquisition(spec, tuple(chest.spacing))   # a default scan of a mixed set: its CSV row
    lung = chest.lung

    # Store: identity for most scans; some flip axes (origin moves to the other end).
    shape, spacing_zyx = np.array(chest.shape), chest.spacing
    flipped = index % 4 == 1
    flips = np.array(FLIPPED_DIRECTIONS[int(rng.integers(len(FLIPPED_DIRECTIONS)))] if flipped else (1, 1, 1))
    origin = np.array([-(shape[2] - 1) * spacing_zyx[2] / 2 + rng.uniform(-12, 12),
                       -(shape[1] - 1) * spacing_zyx[1] / 2 + rng.uniform(-12, 12),
                       rng.uniform(-350, -50)]).round(4)
    spacing_xyz = spacing_zyx[::-1]
    origin = origin + np.where(flips < 0, (shape[::-1] - 1) * spacing_xyz, 0)
    flip_axes = tuple(2 - k for k in range(3) if flips[k] < 0)
    if flip_axes:
        hu = np.ascontiguousarray(np.flip(hu, flip_axes))
        lung = np.ascontiguousarray(np.flip(lung, flip_axes))
    direction = tuple(float(v) for v in np.diag(flips).ravel())
    flips_irc = flips[::-1]

    def to_world(local_mm: np.ndarray) -> XyzTuple:
        irc = local_mm / spacing_zyx
        irc = np.where(flips_irc < 0, shape - 1 - irc, irc)
        return irc2xyz(irc, origin, spacing_xyz, direction)

    return SynthScan(
        uid=uid, hu=hu, lung_mask=lung, origin_xyz=tuple(float(v) for v in origin),
        spacing_xyz=tuple(float(v) for v in spacing_xyz), direction=direction,
        nodules=[Finding(to_world(c), d, k) for c, d, k in nodules],
        excluded=[Finding(to_world(c), d, k) for c, d, k in excluded],
        candidates=[Candidate(to_world(p), 1, "nodule") for p in positives]
        + [Candidate(to_world(p), 0, k) for p, k in negatives], acquisition=drawn)


def write_scan(scan: SynthScan, path: Path, scan_format: str = "mhd") -> int:
    """Write ``scan`` with its geometry as ``path``; returns bytes written.

    Args:
        scan: the scan.
        path: ``<uid>.mhd`` (+ ``.raw``, uncompressed), ``<uid>.nii.gz``, or for "dicom" the series
            folder (one file per slice; see :func:`luna.io.writers.write_dicom_series`).
            :func:`luna.io.writers.scan_name` gives the name for each format.
        scan_format: "mhd", "nifti" or "dicom" (``SCAN_FORMATS``).
    """
    image = sitk.GetImageFromArray(scan.hu)
    image.SetOrigin(scan.origin_xyz)
    image.SetSpacing(scan.spacing_xyz)
    image.SetDirection(scan.direction)
    return sum(p.stat().st_size for p in write_image(image, Path(path), scan_format, scan.uid))


# --------------------------------------------------------------------------- the data set

def _fmt(value: float) -> str:
    return f"{value:.6f}"


def _build_one(job: tuple) -> tuple[str, list[Finding], list[Finding], list[Candidate], Path, int,
                                    ScanAcquisition | None]:
    """Generate and write one scan (a top-level function so worker processes can run it)."""
    root, seed, index, size, nodules, ratio, scan_format, acquisition = job
    scan = generate_scan(seed, index, size, nodules, ratio, acquisition)
    path = Path(root) / f"subset{index % N_SUBSETS}" / scan_name(scan.uid, scan_format)
    n_bytes = write_scan(scan, path, scan_format)
    log.debug("scan %d %s: %s voxels, %d nodules, %d candidates", index, scan.uid,
              "x".join(map(str, scan.hu.shape)), len(scan.nodules), len(scan.candidates))
    return (scan.uid, scan.nodules, scan.excluded, scan.candidates, path.relative_to(root), n_bytes,
            scan.acquisition)


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[str]], rng: np.random.Generator) -> int:
    order = rng.permutation(len(rows))   # like the real files: not grouped by class
    return write_table(path, header, [rows[i] for i in order]).stat().st_size


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an output directory we must not write into; one-line UsageError."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise UsageError(f"output directory {out_dir} exists and is not empty "
                             "(use --force to replace it)")
        if not (out_dir / "candidates.csv").exists() and not (out_dir / "subset0").exists():
            raise UsageError(f"refusing to replace {out_dir}: it does not look like a LUNA16-layout data set")


def make_dataset(out_dir: Path, n_series: int = 32, seed: int = 0, size: str = "small",
                 nodules_per_scan: tuple[int, int] | None = None,
                 negatives_per_positive: int | None = None,
                 overwrite: bool = False, workers: int = 1, scan_format: str = "mhd",
                 acquisition: str = "default") -> SynthSummary:
    """Write a synthetic data set in the LUNA16 layout, all at once or not at all.

    Files are written into a temporary directory next to ``out_dir`` which is renamed into
    place at the end, so a failed run leaves nothing half-written.

    Args:
        out_dir: target directory; must be missing or empty unless ``overwrite``.
        n_series: number of scans, spread round-robin over subset0..subset9.
        seed: same seed, same bytes.
        size: "tiny", "small" or "full" (see the module docstring).
        nodules_per_scan: (min, max) inclusive; default (4, 8), or (1, 3) for "tiny".
        negatives_per_positive: default 150, or 12 for "tiny".
        overwrite: replace an existing data set at ``out_dir``.
        workers: processes generating scans in parallel (the output does not depend on it).
        scan_format: "mhd" (LUNA16's), "nifti" (``<uid>.nii.gz``) or "dicom" (a folder
            ``<uid>/`` of one file per slice); same voxels, geometry and CSVs in each.
        acquisition: "default" (today's scans), "varied", "shifted" or "mixed" (see
            :mod:`luna.synth.acquisition`); all but the default also write ``acquisition.csv``,
            one row a scan with its slice spacing and thickness, pixel, noise and HU offset.

    Returns:
        A :class:`SynthSummary` of what was written (paths point into ``out_dir``).
    """
    started = time.perf_counter()
    _, nodules, ratio = _resolve(size, nodules_per_scan, negatives_per_positive)
    with_csv = check_acquisition(acquisition) != "default"
    if scan_format not in SCAN_FORMATS:
        raise UsageError(f"unknown scan format {scan_format!r}; choose one of {', '.join(SCAN_FORMATS)}")
    if n_series < 1:
        raise UsageError(f"n_series must be >= 1, got {n_series}")
    out_dir = Path(out_dir).absolute()
    check_out_dir(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        # mkdtemp makes the folder private (0700); a data set gets the usual mode, so that other
        # users of the machine can read it.
        os.chmod(tmp, 0o777 & ~_umask())
        for k in range(N_SUBSETS):
            (tmp / f"subset{k}").mkdir()
        jobs = [(str(tmp), seed, i, size, nodules, ratio, scan_format, acquisition) for i in range(n_series)]
        if workers > 1 and n_series > 1:
            with ProcessPoolExecutor(max_workers=min(workers, n_series)) as pool:
                results = list(pool.map(_build_one, jobs))
        else:
            results = [_build_one(job) for job in jobs]
        uids = [r[0] for r in results]
        if len(set(uids)) != len(uids):
            raise RuntimeError("two synthetic scans drew the same series uid")
        ann_rows, exc_rows, cand_rows = [], [], []
        for uid, found, excluded, candidates, *_ in results:
            ann_rows += [[uid, *map(_fmt, f.center_xyz), _fmt(f.diameter_mm)] for f in found]
            exc_rows += [[uid, *map(_fmt, f.center_xyz), "-1" if f.diameter_mm < 0 else _fmt(f.diameter_mm)]
                         for f in excluded]
            cand_rows += [[uid, *map(_fmt, c.center_xyz), str(c.label)] for c in candidates]
        shuffle_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**31,)))
        n_bytes = sum(r[5] for r in results)
        n_bytes += _write_csv(tmp / "annotations.csv", ANNOTATION_COLUMNS, ann_rows, shuffle_rng)
        n_bytes += _write_csv(tmp / "candidates.csv", CANDIDATE_COLUMNS, cand_rows, shuffle_rng)
        n_bytes += _write_csv(tmp / "annotations_excluded.csv", ANNOTATION_COLUMNS, exc_rows, shuffle_rng)
        if with_csv:
            n_bytes += write_acquisition_csv(tmp / ACQUISITION_CSV, uids, [r[6] for r in results])
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_pos = sum(int(row[4]) for row in cand_rows)
    return SynthSummary(
        out_dir=out_dir, series_uids=uids, n_annotations=len(ann_rows), n_excluded=len(exc_rows),
        n_positive=n_pos, n_negative=len(cand_rows) - n_pos, bytes_written=n_bytes,
        seconds=time.perf_counter() - started, annotations_csv=out_dir / "annotations.csv",
        candidates_csv=out_dir / "candidates.csv", excluded_csv=out_dir / "annotations_excluded.csv",
        scan_paths=[out_dir / r[4] for r in results],
        acquisition_csv=out_dir / ACQUISITION_CSV if with_csv else None)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished temp dir to ``out_dir``; an old one is moved aside, then deleted."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

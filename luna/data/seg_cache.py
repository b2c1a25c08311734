"""The segmentation cache: each scan on the segmentation grid with its nodule mask, memory-mapped.

Layout (under ``cache_dir/<key>/``, e.g. ``seg-v1-p1.25mm-s2mm-sphere/``)::

    <series_uid>.<annotations hash>.hu.npy     int16 (I, R, C): the scan on the grid
    <series_uid>.<annotations hash>.mask.npy   uint8 (I, R, C): its nodule mask (1 = nodule)
    <series_uid>.<annotations hash>.json       geometry, nodules on the grid, source stamp (the marker)

Why whole scans rather than crops around nodules: training draws its 64 x 64 crops anywhere
(around nodules, and at random in the lungs), and validation reads whole slices of held-out
scans; one entry per scan serves both, and a change of sampling needs no new cache. A scan on
the default grid costs about 3 bytes a voxel, ~11 MB for a built-in scan. Entries are
validated and written like the crop cache's (:mod:`luna.data.cache`): arrays first, then the
marker, each atomically; a stale or partial entry is rebuilt, never served.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from luna.atomic import atomic_open
from luna.data.cache import FREE_SPACE_MARGIN_BYTES, free_bytes, run_jobs, source_stamp
from luna.data.masks import MASK_HU, nodule_mask
from luna.data.seg_grid import GridVolume, SegGrid, to_grid
from luna.errors import DataError, is_disk_full
from luna.io.ct import Ct
from luna.luna16.csvfiles import check_series_uid
from luna.luna16.geometry import XyzTuple

log = logging.getLogger(__name__)

SEG_CACHE_VERSION = 1
# Bytes per grid voxel: int16 HU and a uint8 mask.
BYTES_PER_VOXEL = 3


def annotations_digest(nodules: np.ndarray) -> str:
    """Short hash of a scan's annotation rows (x, y, z, diameter_mm): the mask an entry holds."""
    return hashlib.sha1(np.ascontiguousarray(nodules, dtype=np.float64).tobytes()).hexdigest()[:16]


@dataclass
class SegEntry:
    """One scan of the cache, opened: arrays are read-only memory maps.

    ``nodules_irc`` (M, 3) are the nodule centres in continuous grid voxels, ``diameters_mm``
    (M,) their diameters.
    """

    series_uid: str
    volume: GridVolume
    mask_a: np.ndarray
    nodules_irc: np.ndarray
    diameters_mm: np.ndarray


class SegCache:
    """Read and fill the segmentation cache.

    Args:
        cache_dir: root of the caches (shared with the crop cache).
        grid: the voxel size scans are resampled to.
        mask_rule: ``"sphere"`` or ``"box"`` (:mod:`luna.data.masks`).
    """

    def __init__(self, cache_dir: Path, grid: SegGrid, mask_rule: str = "sphere"):
        self.grid, self.mask_rule = grid, mask_rule
        self.root = Path(cache_dir) / f"seg-v{SEG_CACHE_VERSION}-p{grid.pixel_mm:g}mm-s{grid.slice_mm:g}mm-{mask_rule}"

    def paths(self, series_uid: str, nodules: np.ndarray) -> tuple[Path, Path, Path]:
        """The entry's HU, mask and marker files."""
        stem = f"{check_series_uid(series_uid, 'segmentation cache')}.{annotations_digest(nodules)}"
        return self.root / f"{stem}.hu.npy", self.root / f"{stem}.mask.npy", self.root / f"{stem}.json"

    def _marker(self, series_uid: str, nodules: np.ndarray) -> dict | None:
        *_, json_path = self.paths(series_uid, nodules)
        try:
            return json.loads(json_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_valid(self, series_uid: str, scan_path: Path, nodules: np.ndarray) -> bool:
        """True when a complete entry for this scan file and these annotations exists."""
        meta = self._marker(series_uid, nodules)
        hu_path, mask_path, _ = self.paths(series_uid, nodules)
        return (meta is not None and meta.get("source") == source_stamp(scan_path)
                and meta.get("grid") == self.grid.as_dict() and meta.get("mask_rule") == self.mask_rule
                and hu_path.is_file() and hu_path.stat().st_size == meta.get("hu_bytes")
                and mask_path.is_file() and mask_path.stat().st_size == meta.get("mask_bytes"))

    def build(self, series_uid: str, scan_path: Path, nodules: np.ndarray) -> None:
        """Read the scan, resample it, mark its nodules and write the entry atomically.

        Args:
            series_uid: the scan's uid.
            scan_path: its file.
            nodules: (M, 4) x, y, z (world mm) and diameter_mm of its annotations.
        """
        nodules = np.asarray(nodules, dtype=np.float64).reshape(-1, 4)
        volume = to_grid(Ct(scan_path, series_uid), self.grid)
        nodules_irc = np.array([volume.xyz2irc_float(row[:3]) for row in nodules]).reshape(-1, 3)
        mask = nodule_mask(volume.hu_a, volume.spacing_irc, nodules_irc, nodules[:, 3], self.mask_rule, MASK_HU)
        hu_path, mask_path, json_path = self.paths(series_uid, nodules)
        self.root.mkdir(parents=True, exist_ok=True)
        json_path.unlink(missing_ok=True)  # no reader may pair the old marker with new arrays
        try:
            for path, array in ((hu_path, volume.hu_a.astype(np.int16, copy=False)), (mask_path, mask.astype(np.uint8))):
                with atomic_open(path, durable=True) as handle:
                    np.save(handle, array, allow_pickle=False)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise DataError(f"segmentation cache {hu_path}: no space left on the device; free some space or "
                            f"point --cache-dir at another disk") from None
        meta = {"series_uid": series_uid, "source": source_stamp(scan_path), "grid": self.grid.as_dict(),
                "mask_rule": self.mask_rule, "hu_bytes": hu_path.stat().st_size,
                "mask_bytes": mask_path.stat().st_size, **volume.geometry(),
                "nodules_irc": nodules_irc.tolist(), "diameters_mm": nodules[:, 3].tolist()}
        with atomic_open(json_path, durable=True) as handle:
            handle.write(json.dumps(meta, indent=1).encode())

    def open(self, series_uid: str, scan_path: Path, nodules: np.ndarray) -> SegEntry:
        """The entry as memory maps, built first when it is missing or stale."""
        nodules = np.asarray(nodules, dtype=np.float64).reshape(-1, 4)
        if not self.is_valid(series_uid, scan_path, nodules):
            self.build(series_uid, scan_path, nodules)
        meta = self._marker(series_uid, nodules)
        hu_path, mask_path, json_path = self.paths(series_uid, nodules)
        try:
            hu_a = np.load(hu_path, mmap_mode="r", allow_pickle=False)
            mask_a = np.load(mask_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"segmentation cache entry {hu_path} is unreadable ({exc}); delete it to rebuild") from None
        if meta is None or hu_a.shape != mask_a.shape or hu_a.ndim != 3:
            raise DataError(f"segmentation cache entry {json_path} does not match its arrays; delete it to rebuild")
        volume = GridVolume(hu_a, XyzTuple(*meta["origin_xyz"]), XyzTuple(*meta["spacing_xyz"]),
                            np.asarray(meta["direction"], dtype=np.float64).reshape(3, 3))
        return SegEntry(series_uid, volume, mask_a, np.asarray(meta["nodules_irc"], dtype=np.float64).reshape(-1, 3),
                        np.asarray(meta["diameters_mm"], dtype=np.float64))


def _build_job(job: tuple) -> str:
    cache, series_uid, scan_path, nodules = job
    cache.build(series_uid, scan_path, nodules)
    return series_uid


def fill_seg_cache(cache: SegCache, scans: Sequence[tuple[str, Path, np.ndarray]], num_workers: int = 0) -> int:
    """Build every missing or stale entry, one scan per job, with a progress report.

    Args:
        cache: the cache.
        scans: ``(series_uid, scan path, (M, 4) annotations)`` of each scan.
        num_workers: processes; 0 builds here. A worker holds one scan at a time.

    Returns:
        The number of scans built.
    """
    jobs = [(cache, uid, path, nodules) for uid, path, nodules in scans if not cache.is_valid(uid, path, nodules)]
    log.info("%d of %d scans already in the segmentation cache; filling %d into %s",
             len(scans) - len(jobs), len(scans), len(jobs), cache.root)
    if not jobs:
        return 0
    # A guess from the scans' files: int16 on disk, 3 bytes a voxel here, and up to twice the
    # voxels after resampling. Enough to refuse a disk that is clearly too small before any work.
    needed = sum(size for *_, path, _ in jobs for size, _ in source_stamp(path).values()) * BYTES_PER_VOXEL
    free = free_bytes(cache.root)
    if needed + FREE_SPACE_MARGIN_BYTES > free:
        raise DataError(f"segmentation cache {cache.root}: about {needed / 1e9:.1f} GB needed and "
                        f"{free / 1e9:.1f} GB free on that disk; free some space or point --cache-dir at another disk")
    start = time.monotonic()
    run_jobs(_build_job, jobs, num_workers, "Filling segmentation cache")
    log.info("Cached %d scans on the segmentation grid in %.1f s", len(jobs), time.monotonic() - start)
    return len(jobs)

"""The crop cache: every candidate crop of a scan, as int16, in one memory-mappable file.

Layout (all under ``cache_dir/<crop key>/``, e.g. ``v3-32x48x48-hu-1000_1000-pad/``)::

    <series_uid>.<centres hash>.npy    int16 array (K, I, R, C): one row per candidate
    <series_uid>.<centres hash>.json   what the crops were made from (the commit marker)

Why this shape: the reference gzips float32 crops one by one into diskcache; decompression
dominates reads and float32 doubles the bytes. Here a read is a slice of a memory map (the page
cache does the rest), a crop costs exactly its int16 bytes, and a scan is read once to fill it.

Validity: the key holds the crop config and format version (directory) and a hash of the
candidate centres (file name); the JSON holds the source files' size and mtime. A stale or
partial entry is rebuilt, never served. Writes are atomic: ``.npy`` then ``.json``, each via a
temp file and ``os.replace``, so a killed writer leaves either a complete entry or none.
Nothing here is pickled: ``np.load(allow_pickle=False)`` and JSON only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import shutil
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np

from luna.atomic import atomic_open
from luna.data.crops import Cropper, CropConfig
from luna.errors import DataError, is_disk_full
from luna.io.ct import Ct
from luna.io.scans import scan_files
from luna.luna16.csvfiles import check_series_uid
from luna.progress import enumerate_with_estimate

log = logging.getLogger(__name__)
T = TypeVar("T")

# Open memory maps per process; each holds a file descriptor, so keep the count bounded.
MAX_OPEN_ENTRIES = 64
# Headroom kept free when filling: the rest of the machine needs the disk too.
FREE_SPACE_MARGIN_BYTES = 256 * 2 ** 20


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or would hold it, if it does not exist yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def centers_digest(centers_xyz: Sequence[Sequence[float]]) -> str:
    """Short hash of a scan's candidate centres, in order: the rows an entry must hold."""
    data = np.asarray(centers_xyz, dtype=np.float64).reshape(-1, 3)
    return hashlib.sha1(data.tobytes()).hexdigest()[:16]


def source_stamp(scan_path: Path) -> dict:
    """Size and mtime of each file a scan is read from (a header and its data file, a NIfTI
    file, every DICOM file of a series folder): a changed scan must be re-cached."""
    stamp = {}
    for path in scan_files(scan_path):
        if path.exists():
            st = path.stat()
            stamp[path.name] = [st.st_size, st.st_mtime_ns]
    return stamp


class CropCache:
    """Read and fill cached crops.

    Args:
        cache_dir: root of the cache (shared by every crop config).
        crop: crop shape and clip range; part of the key.
    """

    def __init__(self, cache_dir: Path, crop: CropConfig = CropConfig()):
        self.root = Path(cache_dir) / crop.key()
        self.crop = crop
        self._open: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict:
        # Memory maps do not travel to DataLoader workers; each process opens its own.
        return {**self.__dict__, "_open": OrderedDict()}

    def entry_paths(self, series_uid: str, digest: str) -> tuple[Path, Path]:
        check_series_uid(series_uid, "crop cache")
        stem = f"{series_uid}.{digest}"
        return self.root / f"{stem}.npy", self.root / f"{stem}.json"

    def is_valid(self, series_uid: str, scan_path: Path, centers_xyz: Sequence[Sequence[float]]) -> bool:
        """True when a complete entry for exactly these centres and this scan file exists."""
        digest = centers_digest(centers_xyz)
        npy_path, json_path = self.entry_paths(series_uid, digest)
        try:
            meta = json.loads(json_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return (meta.get("crop") == self.crop.as_dict() | {"shape_irc": list(self.crop.shape_irc)}
                and meta.get("count") == len(centers_xyz)
                and meta.get("source") == source_stamp(scan_path)
                and npy_path.is_file()
                and npy_path.stat().st_size == meta.get("npy_bytes"))

    def build(self, series_uid: str, scan_path: Path, centers_xyz: Sequence[Sequence[float]],
              ct: Ct | None = None) -> np.ndarray:
        """Read the scan once, crop every centre, write the entry atomically; return the crops."""
        ct = ct or Ct(scan_path, series_uid)
        cropper = Cropper(ct, self.crop)
        crops = np.empty((len(centers_xyz), *self.crop.shape_irc), dtype=np.int16)
        centers_irc = []
        for row, center_xyz in enumerate(centers_xyz):
            crops[row], center_irc = cropper.crop_at(center_xyz)
            centers_irc.append(list(center_irc))
        digest = centers_digest(centers_xyz)
        npy_path, json_path = self.entry_paths(series_uid, digest)
        self.root.mkdir(parents=True, exist_ok=True)
        # Drop the old marker first: between the two writes no reader may pair it with new crops.
        json_path.unlink(missing_ok=True)
        try:
            with atomic_open(npy_path, durable=True) as handle:
                np.save(handle, crops, allow_pickle=False)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # atomic_open removed its temp file: the cache holds no partial entry.
            raise DataError(f"crop cache {npy_path}: no space left on the device for {crops.nbytes / 1e9:.2f} GB "
                            f"of crops; free some space or point --cache-dir at another disk") from None
        meta = {"series_uid": series_uid, "count": len(centers_xyz),
                "crop": self.crop.as_dict() | {"shape_irc": list(self.crop.shape_irc)},
                "source": source_stamp(scan_path), "npy_bytes": npy_path.stat().st_size,
                "origin_xyz": list(ct.origin_xyz), "spacing_xyz": list(ct.spacing_xyz),
                "direction": ct.direction.ravel().tolist(), "centers_irc": centers_irc}
        with atomic_open(json_path, durable=True) as handle:
            handle.write(json.dumps(meta, indent=1).encode())
        self._open.pop(f"{series_uid}.{digest}", None)
        return crops

    def ensure(self, series_uid: str, scan_path: Path, centers_xyz: Sequence[Sequence[float]]) -> bool:
        """Build the entry unless a valid one exists. Returns True when it had to build."""
        if self.is_valid(series_uid, scan_path, centers_xyz):
            return False
        self.build(series_uid, scan_path, centers_xyz)
        return True

    def open_entry(self, series_uid: str, scan_path: Path, centers_xyz: Sequence[Sequence[float]],
                   digest: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A scan's crops as a memory map (validated, built first if needed) and their centre
        voxels (K, 3); kept open per process. Pass ``digest`` (:func:`centers_digest` of the
        centres) to skip re-hashing the centres on every read."""
        digest = digest or centers_digest(centers_xyz)
        key = f"{series_uid}.{digest}"
        entry = self._open.get(key)
        if entry is not None:
            self._open.move_to_end(key)
            return entry
        self.ensure(series_uid, scan_path, centers_xyz)
        npy_path, json_path = self.entry_paths(series_uid, digest)
        centers_irc = np.asarray(json.loads(json_path.read_text())["centers_irc"], dtype=np.int64)
        try:
            crops = np.load(npy_path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"crop cache entry {npy_path} is unreadable ({exc}); delete it to rebuild") from None
        if crops.shape != (len(centers_xyz), *self.crop.shape_irc) or crops.dtype != np.int16:
            raise DataError(f"crop cache entry {npy_path} has shape {crops.shape} {crops.dtype}; delete it to rebuild")
        self._open[key] = entry = (crops, centers_irc.reshape(-1, 3))
        while len(self._open) > MAX_OPEN_ENTRIES:
            self._open.popitem(last=False)
        return entry


def _build_job(job: tuple) -> int:
    cache, series_uid, scan_path, centers_xyz = job
    cache.build(series_uid, scan_path, centers_xyz)
    return len(centers_xyz)


def run_jobs(build: Callable[[tuple], T], jobs: Sequence[tuple], num_workers: int, desc: str) -> list[T]:
    """Run ``build`` on every job, in this process (``num_workers`` 0) or in a pool, with progress;
    return the results in the order they finished (by job, in this process).

    One job is one whole scan: a worker takes the next scan only when it is done with the last
    (chunksize 1), so memory is one scan per worker whatever the number of scans.
    """
    if num_workers == 0 or len(jobs) == 1:
        return [result for _, result in enumerate_with_estimate(map(build, jobs), desc, total=len(jobs))]
    with multiprocessing.get_context().Pool(min(num_workers, len(jobs))) as pool:
        return [result for _, result in enumerate_with_estimate(pool.imap_unordered(build, jobs, chunksize=1), desc,
                                                                 total=len(jobs))]


def fill_cache(cache: CropCache, series_paths: dict[str, Path],
               centers_by_series: dict[str, Sequence[Sequence[float]]], num_workers: int = 0,
               share: tuple[int, int] = (0, 1)) -> int:
    """Build every missing or stale entry, one whole scan per job, with a progress report.

    Args:
        cache: the cache to fill.
        series_paths: series uid -> scan path (file or DICOM folder).
        centers_by_series: series uid -> its candidate centres, in entry row order.
        num_workers: processes; 0 builds in this process. Each worker holds one scan at a time
            (the scan as read, its clipped int16 copy and that scan's crops), so memory is
            bounded per worker whatever the number of scans.
        share: ``(rank, world_size)``: this process takes every ``world_size``-th scan (by uid)
            from the ``rank``-th on, so that processes under torchrun, on one machine or several
            sharing the cache dir, each fill their own scans; entries are per scan, so no two
            processes write the same file.

    Returns:
        The number of scans built (0 when the cache was already complete).
    """
    rank, world_size = share
    mine = sorted(centers_by_series)[rank::world_size]
    jobs = [(cache, uid, series_paths[uid], centers_by_series[uid]) for uid in mine
            if not cache.is_valid(uid, series_paths[uid], centers_by_series[uid])]
    n_candidates = sum(len(job[3]) for job in jobs)
    log.info("%d of %d scans already cached; filling %d scans (%d candidates) into %s",
             len(mine) - len(jobs), len(mine), len(jobs), n_candidates, cache.root)
    if not jobs:
        return 0
    # Fail before minutes of work rather than with a full disk half-way through.
    needed = n_candidates * int(np.prod(cache.crop.shape_irc)) * np.dtype(np.int16).itemsize
    free = free_bytes(cache.root)
    if needed + FREE_SPACE_MARGIN_BYTES > free:
        raise DataError(f"crop cache {cache.root}: {n_candidates:,} crops need {needed / 1e9:.1f} GB and "
                        f"{free / 1e9:.1f} GB are free on that disk; free some space or point --cache-dir "
                        f"at another disk")
    start = time.monotonic()
    run_jobs(_build_job, jobs, num_workers, "Stuffing cache")
    seconds = time.monotonic() - start
    log.info("Cached %d candidates of %d scans in %.1f s (%.0f candidates/s)",
             n_candidates, len(jobs), seconds, n_candidates / max(seconds, 1e-9))
    return len(jobs)

"""LUNA16 CSVs -> candidate records: parsing, diameter matching, sorting, splits.

Files are found by scanning the data directory (``subset*/<uid>.mhd``), never by formatting
text from a CSV into a path: a series uid is only ever used as a dictionary key here.
"""
from __future__ import annotations

import csv
import logging
import math
import re
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from luna.errors import DataError
from luna.geometry import XyzTuple

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_FILE_NAMES = ("candidates.csv", "candidates_V2.csv")
ANNOTATION_FILE_NAMES = ("annotations.csv",)
EXCLUDED_FILE_NAMES = ("annotations_excluded.csv",)
# Where an unpacked LUNA16 download keeps its CSVs, relative to the data dir.
CSV_SUBDIRS = (".", "CSVFILES", "candidates_V2", "evaluationScript/annotations")

# DICOM uids are digits and dots; other tools use letters, '-' and '_'. Nothing else may appear,
# and never '..', so that a uid can be a file name and never a path.
_SERIES_UID_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,127})$")


class CandidateInfo(NamedTuple):
    """One row of candidates.csv, with the diameter of the annotation it matches (0 if none)."""

    is_nodule: bool
    diameter_mm: float
    series_uid: str
    center_xyz: XyzTuple


def is_valid_series_uid(series_uid: str) -> bool:
    """True when ``series_uid`` is safe to use as a file stem (no separators, no '..')."""
    return bool(_SERIES_UID_RE.match(series_uid)) and ".." not in series_uid


def check_series_uid(series_uid: str, where: str) -> str:
    """Return ``series_uid`` or raise DataError naming ``where`` it came from."""
    if not is_valid_series_uid(series_uid):
        raise DataError(f"{where}: series uid {series_uid!r} is not a plain UID "
                        "(letters, digits, '.', '-', '_' only, no '..')")
    return series_uid


def find_series_files(data_dir: Path) -> dict[str, Path]:
    """Map series uid -> ``.mhd`` path for every scan under ``data_dir`` (any depth).

    Raises:
        DataError: the directory is missing or holds no ``.mhd`` file.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data dir {data_dir} does not exist or is not a directory")
    found: dict[str, Path] = {}
    for path in sorted(data_dir.rglob("*.mhd")):
        uid = path.stem
        if not is_valid_series_uid(uid):
            log.warning("Ignoring %s: its name is not a plain series uid", path)
            continue
        if uid in found:
            log.warning("Series %s is on disk twice (%s, %s); using the first", uid, found[uid], path)
            continue
        found[uid] = path
    if not found:
        raise DataError(f"no .mhd scans found under data dir {data_dir} (expected subset*/<uid>.mhd)")
    return found


def find_csv(data_dir: Path, names: Sequence[str], what: str) -> Path:
    """Find the first of ``names`` in the data dir or its usual LUNA16 sub-folders."""
    for subdir in CSV_SUBDIRS:
        for name in names:
            path = Path(data_dir) / subdir / name
            if path.is_file():
                return path
    raise DataError(f"no {what} CSV ({' or '.join(names)}) found in {data_dir}; give it with a flag")


def read_csv_rows(path: Path, columns: Sequence[str],
                  keep: set[str] | None = None) -> Iterator[tuple[int, str, tuple[float, ...]]]:
    """Yield ``(line_number, series_uid, numbers)`` for each data row of a LUNA16 CSV.

    ``columns[0]`` is the uid column; the others must parse as finite numbers. Rows of series
    not in ``keep`` (when given) are yielded with empty numbers and not checked further.

    Raises:
        DataError: missing/empty file, a missing column, a non-numeric or NaN field, a bad uid.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: file is empty (expected header {','.join(columns)})")
        header = [name.strip() for name in header]
        if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
            raise DataError(f"{path}:1: header {header[0]!r} is not comma-separated "
                            f"(expected {','.join(columns)})")
        missing = [name for name in columns if name not in header]
        if missing:
            raise DataError(f"{path}:1: missing column {missing[0]!r} (header is {','.join(header)}; "
                            f"expected {','.join(columns)})")
        positions = [header.index(name) for name in columns]
        for line_number, row in enumerate(reader, start=2):
            if not row or all(not field.strip() for field in row):
                continue
            if len(row) < len(header):
                raise DataError(f"{path}:{line_number}: expected {len(header)} fields, got {len(row)}")
            uid = row[positions[0]].strip()
            if keep is not None and uid not in keep:
                yield line_number, uid, ()  # a scan that is not on disk: counted, not parsed
                continue
            check_series_uid(uid, f"{path}:{line_number}")
            numbers = []
            for name, pos in zip(columns[1:], positions[1:]):
                text = row[pos].strip()
                try:
                    value = float(text)
                except ValueError:
                    raise DataError(f"{path}:{line_number}: {name} is not a number: {text!r}") from None
                if not math.isfinite(value):
                    raise DataError(f"{path}:{line_number}: {name} is not a finite number: {text!r}")
                numbers.append(value)
            yield line_number, uid, tuple(numbers)


def read_annotations(path: Path, series_uids: set[str] | None = None) -> dict[str, list[tuple[XyzTuple, float]]]:
    """Annotations CSV -> {series_uid: [(center_xyz, diameter_mm), ...]} (optionally filtered)."""
    by_series: dict[str, list[tuple[XyzTuple, float]]] = defaultdict(list)
    for _, uid, (x, y, z, diameter_mm) in read_csv_rows(path, ANNOTATION_COLUMNS):
        if series_uids is None or uid in series_uids:
            by_series[uid].append((XyzTuple(x, y, z), diameter_mm))
    return dict(by_series)


def match_diameter(center_xyz: Sequence[float], annotations: Sequence[tuple[XyzTuple, float]]) -> float:
    """Diameter of the first annotation whose centre is within a quarter of its diameter on
    every axis (the reference's rule), else 0.0."""
    for annotation_xyz, diameter_mm in annotations:
        if all(abs(c - a) <= diameter_mm / 4 for c, a in zip(center_xyz, annotation_xyz)):
            return diameter_mm
    return 0.0


def find_annotations_csv(data_dir: Path) -> Path | None:
    """``annotations.csv`` of a data dir, or None: new scans often come with candidates only."""
    try:
        return find_csv(data_dir, ANNOTATION_FILE_NAMES, "annotations")
    except DataError:
        return None


def find_excluded_csv(data_dir: Path) -> Path | None:
    """``annotations_excluded.csv`` of a data dir, or None (only LUNA16's own release has one)."""
    try:
        return find_csv(data_dir, EXCLUDED_FILE_NAMES, "excluded annotations")
    except DataError:
        return None


def get_candidate_info_list(
    data_dir: Path,
    candidates_csv: Path | None = None,
    annotations_csv: Path | None = None,
    require_on_disk: bool = True,
) -> list[CandidateInfo]:
    """All candidates of the scans on disk, nodules first and largest first.

    Args:
        data_dir: LUNA16 root holding ``subset*/`` (and usually the CSVs).
        candidates_csv: defaults to ``candidates.csv`` or ``candidates_V2.csv`` found in data_dir.
        annotations_csv: defaults to ``annotations.csv`` found in data_dir; without one, every
            diameter is 0 (only the order within each class changes).
        require_on_disk: skip (and count) candidates of scans that are not on disk.

    Returns:
        A new list (callers may shuffle it); parsing is cached per file path and mtime.
    """
    data_dir = Path(data_dir)
    candidates_csv = Path(candidates_csv) if candidates_csv else find_csv(data_dir, CANDIDATE_FILE_NAMES, "candidates")
    annotations_csv = Path(annotations_csv) if annotations_csv else find_annotations_csv(data_dir)
    if annotations_csv is None:
        log.info("No annotations CSV in %s: candidate diameters are unknown (0)", data_dir)
    on_disk = tuple(sorted(find_series_files(data_dir))) if require_on_disk else None
    return list(_cached_candidate_list(
        str(candidates_csv.resolve()), _mtime(candidates_csv),
        str(annotations_csv.resolve()) if annotations_csv else None,
        _mtime(annotations_csv) if annotations_csv else 0, on_disk))


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        raise DataError(f"CSV file {path} does not exist") from None


@lru_cache(maxsize=4)
def _cached_candidate_list(candidates_csv: str, _candidates_mtime: int, annotations_csv: str | None,
                           _annotations_mtime: int, on_disk: tuple[str, ...] | None) -> tuple[CandidateInfo, ...]:
    on_disk_set = set(on_disk) if on_disk is not None else None
    annotations = read_annotations(Path(annotations_csv), on_disk_set) if annotations_csv else {}
    seen: set[tuple[str, tuple[float, ...]]] = set()
    result: list[CandidateInfo] = []
    skipped_series: set[str] = set()
    skipped = duplicates = 0
    for _, uid, numbers in read_csv_rows(Path(candidates_csv), CANDIDATE_COLUMNS, on_disk_set):
        if on_disk_set is not None and uid not in on_disk_set:
            skipped += 1
            skipped_series.add(uid)
            continue
        x, y, z, klass = numbers
        key = (uid, numbers)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        center_xyz = XyzTuple(x, y, z)
        result.append(CandidateInfo(klass > 0.5, match_diameter(center_xyz, annotations.get(uid, ())),
                                    uid, center_xyz))
    if skipped:
        log.info("Skipped %d candidates of %d series not on disk", skipped, len(skipped_series))
    if duplicates:
        log.warning("Dropped %d duplicate rows of %s", duplicates, candidates_csv)
    if not result:
        raise DataError(f"{candidates_csv}: no candidates belong to a scan on disk")
    result.sort(reverse=True)
    return tuple(result)


def split_series(series_uids: Sequence[str], has_nodule: set[str], val_stride: int) -> set[str]:
    """Validation series for a split by scan: every ``val_stride``-th scan, taken separately from
    scans with and without nodules so both sides get their share of positives."""
    with_nodules = sorted(uid for uid in set(series_uids) if uid in has_nodule)
    without = sorted(uid for uid in set(series_uids) if uid not in has_nodule)
    return set(with_nodules[::val_stride]) | set(without[::val_stride])


def split_candidates(candidates: Sequence[CandidateInfo], val_stride: int, is_val: bool,
                     split: str = "scan") -> list[CandidateInfo]:
    """Training or validation part of a sorted candidate list.

    Args:
        candidates: sorted as :func:`get_candidate_info_list` returns them.
        val_stride: every n-th scan (or candidate) goes to validation; 0 keeps everything.
        is_val: return the validation part (True) or the training part (False).
        split: ``"scan"`` (default: no scan on both sides) or ``"candidate"`` (the reference's
            every-n-th-candidate split, which leaks scans between the two sides).
    """
    if val_stride <= 0:
        return list(candidates)
    if split == "candidate":
        return list(candidates[::val_stride]) if is_val else [
            c for i, c in enumerate(candidates) if i % val_stride]
    if split != "scan":
        raise ValueError(f"unknown split {split!r}; expected 'scan' or 'candidate'")
    val_series = split_series([c.series_uid for c in candidates],
                              {c.series_uid for c in candidates if c.is_nodule}, val_stride)
    return [c for c in candidates if (c.series_uid in val_series) == is_val]

"""Candidates: the rows of candidates.csv with their matched diameter, sorted, and the splits.

The rules (docs/luna16.md, "A sample"): a candidate's diameter is that of an annotation of the
same scan whose centre is within a quarter of its diameter on every axis, else 0; candidates are
sorted nodules first, largest first; validation holds out every n-th scan (the default) or every
n-th candidate (the reference's split, which puts candidates of one scan on both sides). A
cross-validation fold holds out the scans of its subsets (subset s in fold s mod n).
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Collection, Mapping, NamedTuple, Sequence

from luna.errors import DataError
from luna.luna16.csvfiles import CANDIDATE_COLUMNS, read_annotations, read_table
from luna.luna16.geometry import XyzTuple

log = logging.getLogger(__name__)

SPLITS = ("scan", "candidate")


class CandidateInfo(NamedTuple):
    """One row of candidates.csv, with the diameter of the annotation it matches (0 if none)."""

    is_nodule: bool
    diameter_mm: float
    series_uid: str
    center_xyz: XyzTuple


def match_diameter(center_xyz: Sequence[float], annotations: Sequence[Sequence[float]]) -> float:
    """Diameter of the first annotation (x, y, z, diameter_mm) whose centre is within a quarter
    of its diameter on every axis (the reference's rule), else 0.0."""
    for x, y, z, diameter_mm in annotations:
        if all(abs(c - a) <= diameter_mm / 4 for c, a in zip(center_xyz, (x, y, z))):
            return float(diameter_mm)
    return 0.0


def load_candidates(candidates_csv: Path, annotations_csv: Path | None,
                    on_disk: Collection[str] | None) -> list[CandidateInfo]:
    """The candidates of ``candidates_csv`` (of the scans ``on_disk``, when given), nodules first
    and largest first. Parsing is cached per file and modification time.

    Args:
        candidates_csv: the candidates file.
        annotations_csv: nodules whose diameters the candidates take; None: every diameter is 0
            (only the order within each class changes).
        on_disk: series uids of the scans present; rows of other scans are skipped and counted.

    Returns:
        A new list (callers may shuffle it).

    Raises:
        DataError: a malformed file, or no candidate of a scan on disk.
    """
    on_disk_key = tuple(sorted(on_disk)) if on_disk is not None else None
    return list(_cached_candidates(str(Path(candidates_csv).resolve()), _mtime(candidates_csv),
                                   str(Path(annotations_csv).resolve()) if annotations_csv else None,
                                   _mtime(annotations_csv) if annotations_csv else 0, on_disk_key))


def _mtime(path: Path) -> int:
    try:
        return Path(path).stat().st_mtime_ns
    except FileNotFoundError:
        raise DataError(f"CSV file {path} does not exist") from None


@lru_cache(maxsize=4)
def _cached_candidates(candidates_csv: str, _candidates_mtime: int, annotations_csv: str | None,
                       _annotations_mtime: int, on_disk: tuple[str, ...] | None) -> tuple[CandidateInfo, ...]:
    keep = set(on_disk) if on_disk is not None else None
    annotations = read_annotations(annotations_csv, series_uids=keep) if annotations_csv else {}
    table = read_table(candidates_csv, CANDIDATE_COLUMNS, "candidates", keep=keep)
    seen: set[tuple] = set()
    result: list[CandidateInfo] = []
    duplicates = 0
    for uid, (x, y, z, klass) in zip(table.uids, table.values.tolist()):
        key = (uid, x, y, z, klass)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        center_xyz = XyzTuple(x, y, z)
        result.append(CandidateInfo(klass > 0.5, match_diameter(center_xyz, annotations.get(uid, ())),
                                    uid, center_xyz))
    if table.n_skipped:
        log.info("Skipped %d candidates of %d series not on disk", table.n_skipped, len(table.skipped_uids))
    if keep is not None and result:
        # Scans on disk that no row names are not used at all: say so, or a wrong candidates
        # file for part of the data goes unnoticed.
        unused = len(keep - {info.series_uid for info in result})
        if unused:
            log.warning("%d of the %d scans on disk have no candidates in %s and are left out",
                        unused, len(keep), candidates_csv)
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
                     split: str = "scan", holdout_series: Collection[str] = ()) -> list[CandidateInfo]:
    """Training or validation part of a sorted candidate list.

    Args:
        candidates: sorted as :func:`load_candidates` returns them.
        val_stride: every n-th scan (or candidate) goes to validation; 0 keeps everything.
        is_val: return the validation part (True) or the training part (False).
        split: ``"scan"`` (default: no scan on both sides) or ``"candidate"`` (the reference's
            every-n-th-candidate split, which leaks scans between the two sides).
        holdout_series: scans on neither side (a cross-validation fold's test scans): they are
            removed before the split, so the run never trains on them nor picks a model by them.
    """
    if holdout_series:
        held_out = set(holdout_series)
        candidates = [c for c in candidates if c.series_uid not in held_out]
    if val_stride <= 0:
        return list(candidates)
    if split == "candidate":
        return list(candidates[::val_stride]) if is_val else [
            c for i, c in enumerate(candidates) if i % val_stride]
    if split != "scan":
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    val_series = split_series([c.series_uid for c in candidates],
                              {c.series_uid for c in candidates if c.is_nodule}, val_stride)
    return [c for c in candidates if (c.series_uid in val_series) == is_val]


# LUNA16 ships its scans in ten subsets, subset0 .. subset9, and its papers score them by
# ten-fold cross-validation: fold k holds out subset k (docs/luna16.md).
LUNA16_SUBSETS = 10


def fold_of_subset(subset: int, n_folds: int) -> int:
    """The fold that holds out ``subset``: subset s goes to fold s mod n (one subset per fold at 10)."""
    return subset % n_folds


def assign_folds(series_subsets: Mapping[str, int], n_folds: int) -> list[list[str]]:
    """The scans each fold holds out, by their subsets.

    Args:
        series_subsets: series uid -> the subset number it lies in.
        n_folds: how many folds (>= 2).

    Returns:
        ``n_folds`` sorted lists of series uids; every scan is in exactly one of them.

    Raises:
        DataError: a fold would hold out no scan (fewer subsets on disk than folds).
    """
    if n_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {n_folds}")
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for uid, subset in sorted(series_subsets.items()):
        folds[fold_of_subset(subset, n_folds)].append(uid)
    empty = [k for k, uids in enumerate(folds) if not uids]
    if empty:
        present = sorted(set(series_subsets.values()))
        raise DataError(f"{n_folds} folds by subset leave fold(s) {', '.join(map(str, empty))} without scans: "
                        f"only subsets {', '.join(map(str, present))} are on disk; use fewer folds")
    return folds

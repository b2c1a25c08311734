"""The candidates of the scans in a data dir: finds the CSVs and the scans, then reads the rows."""
from __future__ import annotations

import logging
from pathlib import Path

from luna.io.scans import find_series_files
from luna.luna16.candidates import CandidateInfo, load_candidates
from luna.luna16.paths import ANNOTATION_FILE_NAMES, CANDIDATE_FILE_NAMES, find_csv, find_optional_csv

log = logging.getLogger(__name__)


def get_candidate_info_list(data_dir: Path, candidates_csv: Path | None = None,
                            annotations_csv: Path | None = None,
                            require_on_disk: bool = True) -> list[CandidateInfo]:
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
    candidates_csv = Path(candidates_csv) if candidates_csv else find_csv(
        data_dir, CANDIDATE_FILE_NAMES, "candidates", "--candidates")
    annotations_csv = Path(annotations_csv) if annotations_csv else find_optional_csv(data_dir, ANNOTATION_FILE_NAMES)
    if annotations_csv is None:
        log.info("No annotations CSV in %s: candidate diameters are unknown (0)", data_dir)
    on_disk = find_series_files(data_dir) if require_on_disk else None
    return load_candidates(candidates_csv, annotations_csv, on_disk)

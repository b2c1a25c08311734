"""Reading and writing the LUNA16 CSV files: results (predictions), annotations, series lists.

A results file has one scored candidate per row, ``seriesuid,coordX,coordY,coordZ,probability``
(world mm); annotation files (``annotations.csv``, ``annotations_excluded.csv``) have
``seriesuid,coordX,coordY,coordZ,diameter_mm``. Malformed input raises :class:`~luna.errors.DataError`
naming the file and line. Scoring them is :mod:`luna.froc`'s job.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from luna.atomic import atomic_open
from luna.errors import DataError

PREDICTION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
FINDING_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


@dataclass
class Predictions:
    """Scored candidates: one row per candidate, world coordinates in mm."""

    series_uids: np.ndarray  # (N,) str
    centers_xyz: np.ndarray  # (N, 3) float
    probabilities: np.ndarray  # (N,) float


# ---------------------------------------------------------------------------------------------
# Reading the CSVs


def _read_table(path: str | Path, columns: Sequence[str], what: str) -> tuple[list[str], np.ndarray]:
    """Rows of a CSV as (series uids, float matrix of the other ``columns``), checked line by line."""
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} file {path}: {exc.strerror}") from None
    uids: list[str] = []
    fields: list[list[str]] = []
    lines: list[int] = []
    try:
        with handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            if not any(header):
                raise DataError(f"{path}: empty file, expected a header with {','.join(columns)}")
            missing = [name for name in columns if name not in header]
            if missing:
                raise DataError(f"{path} line 1: missing column {', '.join(missing)} "
                                f"(header is {','.join(header)})")
            index = [header.index(name) for name in columns]
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank lines, e.g. at the end of a hand-edited file
                if len(row) != len(header):
                    raise DataError(f"{path} line {reader.line_num}: {len(row)} fields, "
                                    f"the header has {len(header)}")
                uid = row[index[0]].strip()
                if not uid:
                    raise DataError(f"{path} line {reader.line_num}: empty {columns[0]}")
                uids.append(uid)
                fields.append([row[i] for i in index[1:]])
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV text file ({exc})") from None
    try:
        values = np.array(fields, dtype=np.float64).reshape(len(fields), len(columns) - 1)
    except ValueError:
        values = None
    if values is None or not np.isfinite(values).all():
        # Something is wrong: walk the rows to name the first bad field and its line.
        for row, line in zip(fields, lines):
            for name, text in zip(columns[1:], row):
                try:
                    number = float(text)
                except ValueError:
                    raise DataError(f"{path} line {line}: {name} is not a number: {text.strip()!r}") from None
                if not np.isfinite(number):
                    raise DataError(f"{path} line {line}: {name} is {text.strip()}, expected a finite number")
        values = np.array([[float(text) for text in row] for row in fields])  # Python parsed what numpy did not
    return uids, values


def read_predictions(path: str | Path) -> Predictions:
    """Read a LUNA16 results file: ``seriesuid,coordX,coordY,coordZ,probability`` (extra columns allowed).

    Raises:
        DataError: naming the file (and line) for a missing file, a missing column, a
            non-numeric or non-finite field, or a file without predictions.
    """
    uids, values = _read_table(path, PREDICTION_COLUMNS, "predictions")
    if not uids:
        raise DataError(f"{path}: no predictions (the file has no rows after the header)")
    return Predictions(np.array(uids), values[:, :3].copy(), values[:, 3].copy())


def write_predictions(path: str | Path, series_uids: Sequence[str], centers_xyz: np.ndarray,
                      probabilities: np.ndarray) -> Path:
    """Write a LUNA16 results file atomically (temp file + rename): never a torn file.

    Args:
        path: the CSV to write.
        series_uids, centers_xyz, probabilities: one row per candidate, world millimetres.

    Returns:
        ``path``.
    """
    path = Path(path)
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_COLUMNS)
        for uid, (x, y, z), p in zip(series_uids, np.asarray(centers_xyz), np.asarray(probabilities)):
            writer.writerow([uid, f"{x:.6f}", f"{y:.6f}", f"{z:.6f}", f"{p:.6g}"])
    return path


def read_annotations(path: str | Path, what: str = "annotations") -> dict[str, np.ndarray]:
    """Read findings, ``seriesuid,coordX,coordY,coordZ,diameter_mm``, grouped by scan.

    Used for ``annotations.csv`` and ``annotations_excluded.csv``. A negative diameter means
    unknown (counted as 10 mm when scoring). A header-only file gives an empty mapping.

    Returns:
        ``{series_uid: (M, 4) array of x, y, z, diameter_mm}``.
    """
    uids, values = _read_table(path, FINDING_COLUMNS, what)
    grouped: dict[str, list[np.ndarray]] = {}
    for uid, row in zip(uids, values):
        grouped.setdefault(uid, []).append(row)
    return {uid: np.array(rows) for uid, rows in grouped.items()}


def read_series_list(path: str | Path) -> list[str]:
    """Scans to evaluate: one series uid per line, or a CSV with a ``seriesuid`` column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"series list file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read series list {path}: {exc}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and "seriesuid" in [name.strip() for name in lines[0].split(",")]:
        column = [name.strip() for name in lines[0].split(",")].index("seriesuid")
        uids = [line.split(",")[column].strip() for line in lines[1:]]
    else:
        uids = lines
    if not uids:
        raise DataError(f"{path}: the series list is empty")
    return list(dict.fromkeys(uids))  # drop repeats, keep order

"""The LUNA16 CSV files: one reader and one writer for candidates, annotations and results.

``candidates.csv`` has ``seriesuid,coordX,coordY,coordZ,class``; ``annotations.csv`` and
``annotations_excluded.csv`` have ``seriesuid,coordX,coordY,coordZ,diameter_mm``; a results file
has ``seriesuid,coordX,coordY,coordZ,probability``. Coordinates are world millimetres.

Every reader goes through :func:`read_table`, so every malformed file gets the same kind of
one-line error: ``<file>:<line>: <column> <what is wrong>``. A UTF-8 byte-order mark (what
spreadsheets put in front of an exported CSV) is read; a header that does not match shows any
invisible character in it. A series uid is checked to be a plain UID before it is used: it is
a dictionary key and a file-name stem here, never a path.
"""
from __future__ import annotations

import csv
import io
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from luna.atomic import write_text_atomic
from luna.errors import DataError

CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
PREDICTION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")

# DICOM uids are digits and dots; other tools use letters, '-' and '_'. Nothing else may appear,
# and never '..', so that a uid can be a file name and never a path.
_SERIES_UID_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,127})$")


def is_valid_series_uid(series_uid: str) -> bool:
    """True when ``series_uid`` is safe to use as a file stem (no separators, no '..')."""
    return bool(_SERIES_UID_RE.match(series_uid)) and ".." not in series_uid


def check_series_uid(series_uid: str, where: str) -> str:
    """Return ``series_uid`` or raise DataError naming ``where`` it came from."""
    if not is_valid_series_uid(series_uid):
        raise DataError(f"{where}: series uid {visible(series_uid)} is not a plain UID "
                        "(letters, digits, '.', '-', '_' only, no '..')")
    return series_uid


def visible(text: str) -> str:
    """``text`` quoted, with invisible or unusual characters written as escapes (``'\\ufeffuid'``)."""
    if all(ch.isprintable() and unicodedata.category(ch)[0] != "C" and ord(ch) < 0x2000 for ch in text):
        return repr(text)
    return ascii(text)


@dataclass
class Table:
    """The rows of a LUNA16 CSV that were kept, parsed.

    ``values`` holds the numeric columns (every column after the uid), ``lines`` the line number
    of each row in the file; rows of scans outside ``keep`` are only counted.
    """

    path: Path
    uids: list[str]
    values: np.ndarray  # (N, columns - 1) float64
    lines: np.ndarray  # (N,) int
    n_skipped: int = 0
    skipped_uids: set[str] = field(default_factory=set)


def read_table(path: str | Path, columns: Sequence[str], what: str, keep: set[str] | None = None) -> Table:
    """Read a CSV with a ``seriesuid`` column and numeric ``columns[1:]``, checking every row.

    Args:
        path: the file.
        columns: the columns it must have (others are allowed and ignored), uid column first.
        what: what the file is, for messages ("candidates", "predictions" ...).
        keep: when given, rows of other series are counted (``Table.n_skipped``) and not parsed.

    Raises:
        DataError: naming the file (and line and column) for a missing or unreadable file, an empty
            one, a missing column, a short row, an empty or unsafe uid, a non-numeric or non-finite
            number.
    """
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # -sig: spreadsheets write a BOM
    except FileNotFoundError:
        raise DataError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{what} file {path} is a directory, not a CSV file") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    uids: list[str] = []
    fields: list[list[str]] = []
    lines: list[int] = []
    skipped = 0
    skipped_uids: set[str] = set()
    with handle:
        try:
            # skipinitialspace: `a, "b"` is the quoted field b, as hand-edited files write it.
            reader = csv.reader(handle, skipinitialspace=True)
            header = _check_header(path, next(reader, None), columns, what)
            index = [header.index(name) for name in columns]
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank lines, e.g. at the end of a hand-edited file
                line = reader.line_num
                if len(row) < len(header) or any(cell.strip() for cell in row[len(header):]):
                    raise DataError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
                uid = row[index[0]].strip()
                if keep is not None and uid not in keep:
                    skipped += 1
                    skipped_uids.add(uid)
                    continue
                if not uid:
                    raise DataError(f"{path}:{line}: {columns[0]} is empty")
                check_series_uid(uid, f"{path}:{line}")
                uids.append(uid)
                fields.append([row[i] for i in index[1:]])
                lines.append(line)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path}: not a readable CSV text file ({exc})") from None
    values = _parse_numbers(path, fields, lines, columns[1:])
    return Table(path, uids, values, np.asarray(lines, dtype=np.int64), skipped, skipped_uids)


def _check_header(path: Path, header: list[str] | None, columns: Sequence[str], what: str) -> list[str]:
    expected = ",".join(columns)
    if header is None or not any(name.strip() for name in header):
        raise DataError(f"{path}: empty {what} file (expected the header {expected})")
    names = [name.strip() for name in header]
    if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
        raise DataError(f"{path}:1: header {visible(names[0])} is not comma-separated (expected {expected})")
    missing = [name for name in columns if name not in names]
    if missing:
        shown = ",".join(visible(name) for name in names)
        raise DataError(f"{path}:1: missing column {missing[0]!r} (header is {shown}; expected {expected})")
    return names


def _parse_numbers(path: Path, fields: list[list[str]], lines: list[int], names: Sequence[str]) -> np.ndarray:
    """The numeric fields as a float matrix; on any bad field, the first one named with its line."""
    try:
        values = np.array(fields, dtype=np.float64).reshape(len(fields), len(names))
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        return values
    # Something is wrong: walk the rows to name the first bad field and its line.
    for row, line in zip(fields, lines):
        for name, text in zip(names, row):
            try:
                number = float(text)
            except ValueError:
                raise DataError(f"{path}:{line}: {name} is not a number: {visible(text.strip())}") from None
            if not math.isfinite(number):
                raise DataError(f"{path}:{line}: {name} is {text.strip()}, expected a finite number")
    # numpy refused something Python parses (e.g. '1_000'): take Python's reading.
    return np.array([[float(text) for text in row] for row in fields], dtype=np.float64).reshape(-1, len(names))


# -- the typed readers ----------------------------------------------------------------------------

def read_annotations(path: str | Path, what: str = "annotations",
                     series_uids: set[str] | None = None) -> dict[str, np.ndarray]:
    """Findings grouped by scan: ``{series_uid: (M, 4) array of x, y, z, diameter_mm}``.

    Used for ``annotations.csv`` and ``annotations_excluded.csv``; a negative diameter means
    unknown. A header-only file gives an empty mapping.

    Args:
        path: the CSV.
        what: what the file is, for messages.
        series_uids: keep only these scans (others are skipped unparsed).
    """
    table = read_table(path, ANNOTATION_COLUMNS, what, keep=series_uids)
    grouped: dict[str, list[np.ndarray]] = {}
    for uid, row in zip(table.uids, table.values):
        grouped.setdefault(uid, []).append(row)
    return {uid: np.array(rows) for uid, rows in grouped.items()}


@dataclass
class Predictions:
    """Scored candidates: one row per candidate, world coordinates in mm."""

    series_uids: np.ndarray  # (N,) str
    centers_xyz: np.ndarray  # (N, 3) float
    probabilities: np.ndarray  # (N,) float


def read_predictions(path: str | Path) -> Predictions:
    """A LUNA16 results file, ``seriesuid,coordX,coordY,coordZ,probability`` (extra columns allowed).

    Raises:
        DataError: as :func:`read_table`, a probability outside [0, 1] (named with its line: a
            score times 100 or a logit would silently change precision and recall), or a file
            without rows.
    """
    table = read_table(path, PREDICTION_COLUMNS, "predictions")
    if not table.uids:
        raise DataError(f"{path}: no predictions (the file has no rows after the header)")
    probabilities = table.values[:, 3]
    bad = (probabilities < 0) | (probabilities > 1)
    if bad.any():
        first = int(bad.argmax())
        raise DataError(f"{path}:{table.lines[first]}: probability is {probabilities[first]:g}, expected a "
                        f"value in [0, 1] ({int(bad.sum())} rows are outside)")
    return Predictions(np.array(table.uids), table.values[:, :3].copy(), probabilities.copy())


def read_series_list(path: str | Path) -> list[str]:
    """Scans to evaluate: one series uid per line, or a CSV with a ``seriesuid`` column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"series list {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read series list {path}: {exc}") from None
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text), skipinitialspace=True)
            if any(cell.strip() for cell in row)]
    if rows and "seriesuid" in rows[0]:
        column = rows[0].index("seriesuid")
        uids = [row[column] if column < len(row) else "" for row in rows[1:]]
    else:
        uids = [",".join(row) for row in rows]
    if not uids:
        raise DataError(f"{path}: the series list is empty")
    for number, uid in enumerate(uids, start=1):
        check_series_uid(uid, f"{path}: entry {number}")
    return list(dict.fromkeys(uids))  # drop repeats, keep order


# -- the writer -----------------------------------------------------------------------------------

def write_table(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    """Write a CSV (already formatted cells) atomically: readers never see a torn file."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def format_mm(value: float) -> str:
    """A coordinate as the shortest text that reads back to the same float: nothing is rounded."""
    return repr(float(value))


def prediction_rows(series_uids: Sequence[str], centers_xyz: Sequence[Sequence[float]],
                    probabilities: Sequence[float]) -> Iterable[list[str]]:
    """The cells of results-file rows, every number as the shortest text that reads back exactly.

    A probability too: a sure model scores many candidates above 0.9999995, which six digits
    would all write as 1, and the FROC would then read the order of those ties, not the model's.
    """
    for uid, (x, y, z), p in zip(series_uids, np.asarray(centers_xyz, dtype=np.float64).tolist(),
                                 np.asarray(probabilities, dtype=np.float64).tolist()):
        yield [uid, format_mm(x), format_mm(y), format_mm(z), repr(p)]


def write_predictions(path: str | Path, series_uids: Sequence[str], centers_xyz: np.ndarray,
                      probabilities: np.ndarray) -> Path:
    """Write a LUNA16 results file atomically.

    Args:
        path: the CSV to write.
        series_uids, centers_xyz, probabilities: one row per candidate, world millimetres.

    Returns:
        ``path``.
    """
    return write_table(path, PREDICTION_COLUMNS, prediction_rows(series_uids, centers_xyz, probabilities))

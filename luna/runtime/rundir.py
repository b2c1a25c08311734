"""The files of a training run directory besides the checkpoints: ``run.json`` (the run's name and
TensorBoard folder) and ``summary.csv`` (one row per epoch). Both are rewritten atomically."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from luna.atomic import write_text_atomic
from luna.errors import DataError
from luna.luna16.paths import RUN_META_NAME, SUMMARY_NAME


def write_run_meta(run_dir: Path, tb_dir: Path, run_name: str, comment: str) -> Path:
    """``run.json``: where the run's TensorBoard events go and what it is called."""
    return write_text_atomic(Path(run_dir) / RUN_META_NAME, json.dumps(
        {"tb_dir": str(tb_dir), "run_name": run_name, "comment": comment}, indent=1))


def read_run_meta(run_dir: Path) -> dict[str, Any] | None:
    """``run.json`` of a run directory, or None when there is none.

    Raises:
        DataError: the file is there but unreadable.
    """
    path = Path(run_dir) / RUN_META_NAME
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: not a luna run.json (expected an object)")
    return meta


def read_summary(run_dir_or_path: Path) -> list[dict[str, str]]:
    """Rows of a run's summary.csv (empty when there is none yet); a run directory or the file."""
    path = Path(run_dir_or_path)
    if path.is_dir():
        path = path / SUMMARY_NAME
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def append_summary_row(run_dir: Path, row: dict[str, Any]) -> None:
    """Append one epoch's row; the header grows with new columns. Rewritten atomically so an
    interrupted write never leaves a torn file."""
    rows = read_summary(run_dir)
    rows.append({k: _fmt(v) for k, v in row.items()})
    _write_rows(Path(run_dir) / SUMMARY_NAME, rows)


def truncate_summary(run_dir: Path, last_epoch: int) -> None:
    """Drop rows after ``last_epoch`` (written by a run killed after its last checkpoint)."""
    path = Path(run_dir) / SUMMARY_NAME
    if path.exists():
        _write_rows(path, [r for r in read_summary(path) if int(r["epoch"]) <= last_epoch])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _write_rows(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())

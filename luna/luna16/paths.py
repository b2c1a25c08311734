"""Names of files on disk and the environment's defaults, in one place.

A LUNA16 data dir holds ``subset0..subset9/<uid>.mhd`` and the CSVs, either beside the subsets
or in the sub-folders an unpacked download uses. A training run directory holds the files named
here; every command that reads or writes one uses these names.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from luna.errors import DataError

# -- a LUNA16 data dir --------------------------------------------------------------------------
CANDIDATE_FILE_NAMES = ("candidates.csv", "candidates_V2.csv")
ANNOTATION_FILE_NAMES = ("annotations.csv",)
EXCLUDED_FILE_NAMES = ("annotations_excluded.csv",)
# Where an unpacked LUNA16 download keeps its CSVs, relative to the data dir.
CSV_SUBDIRS = (".", "CSVFILES", "candidates_V2", "evaluationScript/annotations")

# -- a training run directory -------------------------------------------------------------------
RUN_META_NAME = "run.json"  # the run's name and TensorBoard folder, for --resume and the report
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
SUMMARY_NAME = "summary.csv"  # one row per epoch
VAL_PREDICTIONS_NAME = "val_predictions.csv"  # the last epoch's validation scores, suppressed
REPORT_NAME = "report.html"
EVAL_DIR_NAME = "eval"  # where the demo puts `luna evaluate`'s output
DETECT_EVAL_DIR_NAME = "eval_detect"  # the same for the detection track (`luna detect`'s results)
METRICS_NAME = "metrics.json"  # `luna evaluate`'s figures

# -- a cross-validation directory (luna crossval --out-dir) -----------------------------------------
CROSSVAL_PLAN_NAME = "crossval.json"  # the folds: the subsets and scans each one holds out
FOLD_RESULTS_NAME = "predictions.csv"  # a fold's held-out scans, scored; it marks the fold finished
FOLD_RUNS_NAME = "runs"  # the fold's training runs (TensorBoard prefix) under its folder


def fold_dir_name(fold: int) -> str:
    """A fold's folder in a cross-validation directory, e.g. ``fold0``."""
    return f"fold{fold}"


# -- defaults the environment can set -----------------------------------------------------------
DATA_DIR_ENV = "LUNA_DATA_DIR"
CACHE_DIR_ENV = "LUNA_CACHE_DIR"
DEFAULT_DATA_DIR = "data/luna16"
DEFAULT_CACHE_DIR = "cache"
DEFAULT_RUNS_DIR = "runs"
DEFAULT_TB_PREFIX = "luna"
DEFAULT_SEG_TB_PREFIX = "seg"  # segmentation runs (`luna train-seg`)


def default_data_dir() -> Path:
    """``$LUNA_DATA_DIR``, else ``data/luna16``."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def default_cache_dir() -> Path:
    """``$LUNA_CACHE_DIR``, else ``cache``."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


def predictions_name(split: str) -> str:
    """What ``luna predict`` calls its results file by default, e.g. ``predictions_val.csv``."""
    return f"predictions_{split}.csv"


def detections_name(split: str) -> str:
    """What ``luna detect`` calls its results file in a classifier's run dir, e.g. ``detections_val.csv``."""
    return f"detections_{split}.csv"


def findings_dir(results_csv: Path) -> Path:
    """Where ``luna detect`` puts a results file's per-scan JSON and pictures: beside it, named after it."""
    results_csv = Path(results_csv)
    return results_csv.with_name(results_csv.stem + "_findings")


def find_csv(data_dir: Path, names: Sequence[str], what: str, flag: str) -> Path:
    """The first of ``names`` in the data dir or its usual LUNA16 sub-folders.

    Args:
        data_dir: the data dir.
        names: file names to look for, in order of preference.
        what: what the file is, for the message ("candidates").
        flag: the command-line flag that names the file directly, for the message.

    Raises:
        DataError: none of them is there; the message names the flag, and the parent folder
            when ``data_dir`` looks like one subset of a download.
    """
    data_dir = Path(data_dir)
    for subdir in CSV_SUBDIRS:
        for name in names:
            path = data_dir / subdir / name
            if path.is_file():
                return path
    hint = ""
    if data_dir.name.lower().startswith("subset"):
        hint = f", or point --data-dir at the folder holding the subsets ({data_dir.parent})"
    raise DataError(f"no {what} CSV ({' or '.join(names)}) in {data_dir} or its "
                    f"{', '.join(d + '/' for d in CSV_SUBDIRS[1:])}; give it with {flag}{hint}")


def find_optional_csv(data_dir: Path, names: Sequence[str]) -> Path | None:
    """Like :func:`find_csv` for files a data dir may lack (annotations of new scans, exclusions)."""
    for subdir in CSV_SUBDIRS:
        for name in names:
            path = Path(data_dir) / subdir / name
            if path.is_file():
                return path
    return None

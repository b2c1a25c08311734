"""A training run directory, read once: its name, per-epoch summary, flags and best checkpoint;
``luna evaluate``'s final evaluation in its ``eval/`` folder, when there is one; else its last
validation predictions scored by the LUNA16 rules.

Whatever is missing (no predictions, no annotations, no checkpoint) becomes a note instead of an
error: a report of a half-finished run is still worth reading.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from luna.errors import DataError
from luna.eval.evaluation import Evaluation, evaluate, froc_from_json
from luna.eval.froc import FrocResult
from luna.luna16.csvfiles import read_annotations, read_predictions
from luna.luna16.paths import (ANNOTATION_FILE_NAMES, BEST_NAME, EVAL_DIR_NAME, EXCLUDED_FILE_NAMES, LAST_NAME,
                               METRICS_NAME, RUN_META_NAME, SUMMARY_NAME, VAL_PREDICTIONS_NAME, find_optional_csv)
from luna.report.evaluation_files import FIGURE_NAMES
from luna.runtime.checkpoint import load_checkpoint
from luna.runtime.rundir import read_run_meta, read_summary

log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    """What a run directory holds, read once; ``notes`` collects what is missing."""

    run_dir: Path
    run_name: str
    comment: str
    rows: list[dict[str, str]]  # summary.csv, one dict per epoch, values as written
    args: dict[str, Any] | None  # training flags, from the newest readable checkpoint
    best: dict[str, Any] | None  # best.pt's epoch, metric_name and metric_value
    notes: list[str] = field(default_factory=list)


@dataclass
class FinalEvaluation:
    """What ``luna evaluate`` left in the run's ``eval/`` folder: the figures of the file it scored."""

    metrics_path: Path
    predictions: list[str]  # the results file(s) it scored, as given to luna evaluate
    froc: FrocResult  # its corner points and bootstrap interval, as metrics.json holds them
    classification: dict[str, Any]  # the per-candidate figures (luna.eval.metrics keys)
    figures: list[Path]  # the PNGs it wrote beside metrics.json


def read_final_evaluation(run: RunRecord) -> FinalEvaluation | None:
    """``RUN/eval/metrics.json`` (as the demo writes it), or None; an unreadable one becomes a note."""
    path = run.run_dir / EVAL_DIR_NAME / METRICS_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        froc, classification = froc_from_json(data["froc"]), dict(data["classification"])
        predictions = (data.get("inputs") or {}).get("predictions") or []
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        run.notes.append(f"{path} cannot be read ({type(exc).__name__}: {exc}): the final evaluation is left out")
        return None
    predictions = [str(p) for p in predictions] if isinstance(predictions, list) else [str(predictions)]
    figures = [path.parent / name for name in FIGURE_NAMES if (path.parent / name).is_file()]
    return FinalEvaluation(path, predictions, froc, classification, figures)


def _read_checkpoint(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """A checkpoint's dict, or None with a note: a broken file must not cost the whole report."""
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path)
    except DataError as exc:
        notes.append(str(exc))
        return None


def read_run(run_dir: Path) -> RunRecord:
    """Collect the pieces of a run directory written by ``luna train``.

    Args:
        run_dir: the run directory (holding summary.csv and/or run.json).

    Returns:
        The run's record; absent optional pieces are None, with a note.

    Raises:
        DataError: ``run_dir`` is not a run directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir}: no such directory")
    if not (run_dir / SUMMARY_NAME).is_file() and not (run_dir / RUN_META_NAME).is_file():
        raise DataError(f"{run_dir}: not a luna run directory (no {SUMMARY_NAME} and no {RUN_META_NAME})")
    notes: list[str] = []
    meta: dict[str, Any] = {}
    try:
        meta = read_run_meta(run_dir) or {}
        if not meta:
            notes.append(f"no {RUN_META_NAME}: the run is named after its directory")
    except DataError as exc:
        notes.append(f"{exc}: the run is named after its directory")
    rows = read_summary(run_dir / SUMMARY_NAME)
    if not rows:
        notes.append(f"no epoch has finished yet ({SUMMARY_NAME} is missing or empty)")
    # last.pt holds the newest flags (a resumed run may have raised --epochs); best.pt is a fallback.
    last = _read_checkpoint(run_dir / LAST_NAME, notes)
    best = _read_checkpoint(run_dir / BEST_NAME, notes)
    ckpt = last or best
    if ckpt is None:
        notes.append(f"no readable checkpoint ({LAST_NAME} / {BEST_NAME}): the training arguments are unknown")
    return RunRecord(
        run_dir=run_dir, run_name=str(meta.get("run_name") or run_dir.name), comment=str(meta.get("comment") or ""),
        rows=rows, args=dict(ckpt.get("args") or {}) if ckpt else None,
        best=None if best is None else {key: best.get(key) for key in ("epoch", "metric_name", "metric_value")},
        notes=notes)


def _findings_path(flag: Path | None, run: RunRecord, key: str, names: Sequence[str], what: str) -> Path | None:
    """The flag, else the training flag of the same name, else a file in the training data dir."""
    if flag is not None:
        return flag  # given by the user: a missing file is an error, raised when it is read
    args = run.args or {}
    if args.get(key):
        path = Path(args[key])
        if path.is_file():
            return path
        run.notes.append(f"the {what} used in training, {path}, is not there any more")
    if args.get("data_dir"):
        return find_optional_csv(Path(args["data_dir"]), names)
    return None


def score_predictions(run: RunRecord, annotations: Path | None, excluded: Path | None,
                      n_bootstraps: int, threshold: float, name: str = VAL_PREDICTIONS_NAME,
                      required: bool = True) -> Evaluation | None:
    """Score a results file of the run by the LUNA16 rules; None (with a note) if impossible.

    Only the scans in the predictions are evaluated: they are the validation scans, as in
    training, so the CPM matches the summary's last ``val_froc/cpm``.

    Args:
        name: the results file in the run directory: the training's last validation, or
            ``luna detect``'s findings on the held-out scans (``detections_val.csv``).
        required: whether its absence deserves a note (optional files are simply left out).
    """
    path = run.run_dir / name
    if not path.is_file():
        if required:
            run.notes.append(f"no {name} in the run directory: final FROC, ROC and "
                             "precision-recall figures are left out")
        return None
    annotations = _findings_path(annotations, run, "annotations", ANNOTATION_FILE_NAMES, "annotations")
    if annotations is None:
        run.notes.append("no annotations CSV found (give one with --annotations): final figures are left out")
        return None
    excluded = _findings_path(excluded, run, "excluded", EXCLUDED_FILE_NAMES, "excluded annotations")
    nodules = read_annotations(annotations)
    excluded_findings = read_annotations(excluded, "excluded findings") if excluded else None
    try:
        predictions = read_predictions(path)
    except DataError as exc:
        run.notes.append(f"final figures are left out: {exc}")
        return None
    series_list = sorted(set(predictions.series_uids.tolist()))
    log.info("Scoring %s against %s (%d scans, %d bootstraps)", path, annotations, len(series_list), n_bootstraps)
    return evaluate(predictions, nodules, excluded_findings, series_list, threshold=threshold,
                    n_bootstraps=n_bootstraps)



"""Scoring results files by the LUNA16 rules: the FROC with its interval, the classifier's figures
over every candidate, the JSON form of both, and the table ``luna evaluate`` prints.

Several results files (the folds of a cross-validation, held-out sets made apart) are scored as
one pooled set, the way the official evaluation pools its ten folds; a scan may appear in one
results file only. The FROC rules are :mod:`luna.eval.froc`'s.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from luna.errors import DataError
from luna.eval.froc import FrocInterval, FrocResult, Matches, froc_from_matches, match_candidates
from luna.eval.metrics import GOAL_PRECISION, RECALL_AT_GOAL_KEY, classifier_metrics
from luna.luna16.csvfiles import Predictions, read_annotations, read_predictions
from luna.luna16.rules import FP_RATES, MAX_MARKS_PER_SCAN, Findings

log = logging.getLogger(__name__)

# Below this share of predicted scans with an annotated nodule, the annotations probably belong
# to other scans: say so before printing a CPM.
LOW_OVERLAP_SHARE = 0.5


def classification_of(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict:
    """Per-candidate figures (:func:`~luna.eval.metrics.classifier_metrics`'s keys) plus the
    ``threshold`` and the ``min_precision`` of the recall-at-precision figure."""
    return {**classifier_metrics(labels, probabilities, threshold=threshold),
            "threshold": threshold, "min_precision": GOAL_PRECISION}


def default_series_list(predictions: Predictions, annotations: Findings) -> list[str]:
    """The scans to evaluate when none are named: those the predictions cover.

    Scoring every annotated scan instead would count the nodules of scans that were never
    predicted as missed (on the demo's 8 held-out scans that turns CPM 0.82 into 0.19).

    Raises:
        DataError: no predicted scan has an annotated nodule (the annotations belong to other
            scans, or the predictions do).
    """
    scans = sorted(set(predictions.series_uids.tolist()))  # sorted: the order the bootstrap draws by
    annotated = set(annotations)
    overlap = sum(uid in annotated for uid in scans)
    left_out = len(annotated - set(scans))
    if overlap == 0 and annotated:
        raise DataError(f"none of the {len(scans)} scans in the predictions has a nodule in the annotations "
                        f"({len(annotated)} annotated scans): are they of the same data? Give --series-list "
                        "to score these scans anyway")
    log.info("Evaluating the %d scans of the predictions (%d with annotated nodules)%s", len(scans), overlap,
             f"; {left_out} annotated scans have no predictions and are left out (name them with "
             "--series-list to count their nodules as missed)" if left_out else "")
    if overlap < LOW_OVERLAP_SHARE * len(scans):
        log.warning("Only %d of the %d predicted scans have an annotated nodule: check that the annotations "
                    "belong to these scans", overlap, len(scans))
    return scans


def _number(value: float) -> float | None:
    """JSON has no nan: undefined figures are written as null."""
    return None if value is None or not math.isfinite(value) else float(value)


def _numbers(values: Sequence[float]) -> list[float | None]:
    return [_number(v) for v in np.asarray(values, dtype=np.float64).tolist()]


def froc_to_json(result: FrocResult) -> dict:
    """A JSON-ready dict of a FROC result.

    The curve keeps only its corners (the points where the sensitivity rises, and the last one):
    a dropped point only adds false positives at the sensitivity of the point before it, so every
    step reading, and the drawn curve, is the same, and the file stays small on all of LUNA16.
    """
    sens = result.sensitivity
    corner = np.diff(sens, prepend=0.0) != 0
    corner[-1:] = True
    ci = result.ci
    return {
        "cpm": _number(result.cpm),
        "cpm_ci": _numbers(ci.cpm) if ci else None,
        "sensitivity_at": {str(rate): _number(s) for rate, s in result.sensitivity_at.items()},
        "sensitivity_at_ci": {str(rate): _numbers(ci.sensitivity_at[rate]) for rate in FP_RATES} if ci else None,
        "n_scans": result.n_scans, "n_nodules": result.n_nodules, "n_found": result.n_found,
        "max_sensitivity": _number(result.n_found / result.n_nodules if result.n_nodules else math.nan),
        "n_false_positives": result.n_false_positives, "n_candidates": result.n_candidates,
        "n_scored": result.n_scored,
        "curve": {"fps_per_scan": _numbers(result.fps_per_scan[corner]),
                  "sensitivity": _numbers(sens[corner]), "thresholds": _numbers(result.thresholds[corner])},
        "bootstrap": None if ci is None else {
            "n_bootstraps": ci.n_bootstraps, "seed": ci.seed, "level": ci.level,
            "band_fps": _numbers(ci.band_fps), "band_lower": _numbers(ci.band_lower),
            "band_upper": _numbers(ci.band_upper)},
    }


def froc_from_json(data: dict) -> FrocResult:
    """Rebuild a :class:`FrocResult` (corner points only) from :func:`froc_to_json`'s dict, e.g. to re-plot."""
    def number(value: float | None) -> float:
        return math.nan if value is None else float(value)

    def array(values: list) -> np.ndarray:
        return np.array([number(v) for v in values], dtype=np.float64)

    def pair(values: list) -> tuple[float, float]:
        return number(values[0]), number(values[1])

    boot = data.get("bootstrap")
    ci = None if boot is None else FrocInterval(
        n_bootstraps=boot["n_bootstraps"], seed=boot["seed"], level=boot["level"], cpm=pair(data["cpm_ci"]),
        sensitivity_at={float(rate): pair(v) for rate, v in data["sensitivity_at_ci"].items()},
        band_fps=array(boot["band_fps"]), band_lower=array(boot["band_lower"]),
        band_upper=array(boot["band_upper"]))
    curve = data["curve"]
    return FrocResult(
        fps_per_scan=array(curve["fps_per_scan"]), sensitivity=array(curve["sensitivity"]),
        thresholds=array(curve["thresholds"]), cpm=number(data["cpm"]),
        sensitivity_at={float(rate): number(v) for rate, v in data["sensitivity_at"].items()},
        n_scans=data["n_scans"], n_nodules=data["n_nodules"], n_found=data["n_found"],
        n_false_positives=data["n_false_positives"], n_candidates=data["n_candidates"],
        n_scored=data["n_scored"], ci=ci)


def read_pooled_predictions(paths: Sequence[Path]) -> Predictions:
    """The rows of one or more results files, as one.

    Raises:
        DataError: as :func:`read_predictions`, or a scan scored in two of the files (its
            candidates would count twice).
    """
    parts = [read_predictions(path) for path in paths]
    first_file: dict[str, Path] = {}
    for path, part in zip(paths, parts):
        for uid in np.unique(part.series_uids):
            if uid in first_file:
                raise DataError(f"{path}: series {uid} is also in {first_file[uid]}; "
                                "pool results files of different scans only")
            first_file[uid] = path
    return Predictions(np.concatenate([part.series_uids for part in parts]),
                       np.concatenate([part.centers_xyz for part in parts]),
                       np.concatenate([part.probabilities for part in parts]))


def read_pooled_findings(paths: Sequence[Path], what: str = "annotations") -> Findings:
    """The findings of one or more annotation files, as one mapping.

    Raises:
        DataError: as :func:`read_annotations`, or a scan annotated in two of the files.
    """
    merged: Findings = {}
    first_file: dict[str, Path] = {}
    for path in paths:
        for uid, rows in read_annotations(path, what).items():
            if uid in merged:
                raise DataError(f"{path}: series {uid} also has {what} in {first_file[uid]}; "
                                "give each scan's findings once")
            merged[uid], first_file[uid] = rows, path
    return merged


@dataclass
class Evaluation:
    """Everything ``luna evaluate`` reports: the FROC, the per-candidate figures and the matches."""

    froc: FrocResult
    classification: dict
    matches: Matches

    def to_dict(self) -> dict:
        """JSON-ready: nan becomes null."""
        return {"froc": froc_to_json(self.froc),
                "classification": {k: _number(v) if isinstance(v, float) else v
                                   for k, v in self.classification.items()},
                "counts": {"excluded_candidates": self.matches.n_excluded,
                           "ignored_rows_of_other_scans": self.matches.n_ignored_rows}}


def evaluate(predictions: Predictions, annotations: Findings, excluded: Findings | None = None,
             series_list: Sequence[str] | None = None, threshold: float = 0.5,
             n_bootstraps: int = 1000, seed: int = 0) -> Evaluation:
    """Score predictions: FROC/CPM (with bootstrap intervals if ``n_bootstraps`` > 0) and per-candidate figures.

    Args:
        predictions: the scored candidates.
        annotations, excluded: nodules and excluded findings, ``{uid: (M, 4)}``.
        series_list: the scans to evaluate; None: :func:`default_series_list`.
        threshold: for precision, recall and F1.
        n_bootstraps, seed: the bootstrap of the scans.

    Per-candidate figures use every candidate of the evaluated scans (not only the 100 scored per
    scan), labelled by whether it hits a nodule; candidates that hit only an excluded finding are
    left out.
    """
    if series_list is None:
        series_list = default_series_list(predictions, annotations)
    matches = match_candidates(predictions.series_uids, predictions.centers_xyz, predictions.probabilities,
                               annotations, excluded, series_list)
    froc = froc_from_matches(matches, n_bootstraps, seed)
    classification = classification_of(matches.candidate_labels, matches.candidate_probabilities, threshold)
    return Evaluation(froc=froc, classification=classification, matches=matches)


def format_table(evaluation: Evaluation) -> str:
    """The human-readable summary ``luna evaluate`` prints."""
    froc, cls, ci = evaluation.froc, evaluation.classification, evaluation.froc.ci

    def interval(pair: tuple[float, float] | None) -> str:
        return f"  [{pair[0]:.3f}, {pair[1]:.3f}]" if pair else ""

    lines = [
        f"scans {froc.n_scans:,}   nodules {froc.n_nodules:,} ({froc.n_found:,} hit in the top "
        f"{MAX_MARKS_PER_SCAN} per scan)   candidates {froc.n_candidates:,} "
        f"({froc.n_scored:,} scored, {evaluation.matches.n_excluded:,} excluded)",
        "",
        "FROC" + (f" ({ci.level:.0%} interval from {ci.n_bootstraps:,} bootstrap resamples of the scans)" if ci else ""),
        f"  {'CPM':<30}{froc.cpm:6.3f}{interval(ci.cpm if ci else None)}",
    ]
    for rate, sens in froc.sensitivity_at.items():
        label = f"sensitivity at {rate:g} FP/scan"
        lines.append(f"  {label:<30}{sens:6.3f}{interval(ci.sensitivity_at[rate] if ci else None)}")
    n_candidates = cls["neg_count"] + cls["pos_count"]
    lines += [
        "",
        f"Per candidate ({n_candidates:,} candidates, {cls['pos_count']:,} hit a nodule)",
        f"  {'ROC AUC':<30}{cls['auc/roc']:6.3f}",
        f"  {'average precision':<30}{cls['auc/pr']:6.3f}",
        f"  {'precision':<30}{cls['pr/precision']:6.3f}   at threshold {cls['threshold']:g}",
        f"  {'recall':<30}{cls['pr/recall']:6.3f}",
        f"  {'F1':<30}{cls['pr/f1_score']:6.3f}",
        f"  {'recall at precision >= ' + format(cls['min_precision'], 'g'):<30}"
        f"{cls[RECALL_AT_GOAL_KEY]:6.3f}   best over all thresholds",
    ]
    return "\n".join(lines)

"""``luna evaluate``: score a LUNA16 results file by the official rules and draw the figures.

    luna evaluate --predictions preds.csv --annotations annotations.csv \\
        --excluded annotations_excluded.csv [--series-list seriesuids.csv] [--out-dir DIR]

Each input flag takes one file or several: several sets of scans (the folds of a
cross-validation, or held-out sets made apart) are then scored as one pooled set, the way the
official LUNA16 evaluation pools its ten folds. A scan may appear in one results file only.

Prints a table (CPM and the sensitivity at each of the seven FP rates with 95% bootstrap
intervals, counts, and per-candidate ROC AUC, average precision, precision, recall and F1) and
writes ``metrics.json`` plus PNG figures to the output directory.

The FROC rules live in :mod:`luna.froc`; this module adds the per-candidate classification
figures, the JSON form of the results (which the report app reads back with
:func:`froc_from_json`) and the app.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from luna import plots
from luna.app import HelpFormatter, add_common_args, non_negative_int, run_app
from luna.errors import DataError
from luna.froc import (FP_RATES, MAX_MARKS_PER_SCAN, Findings, FrocInterval, FrocResult, Matches,
                       froc_from_matches, match_candidates)
from luna.luna16_files import Predictions, read_annotations, read_predictions, read_series_list
from luna.metrics import GOAL_PRECISION, recall_at_precision

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict:
    """Per-candidate figures, with the conventions of :mod:`luna.metrics`.

    Args:
        labels: (C,) bool, the candidate hits a nodule.
        probabilities: (C,) predicted nodule probabilities.
        threshold: a candidate is called a nodule when its probability is strictly above it.

    Returns:
        ``roc_auc`` and ``average_precision`` (nan unless both classes are present),
        ``precision``, ``recall``, ``f1`` (0.0 where undefined), the confusion counts and
        ``recall_at_precision``: the best recall at precision >= ``min_precision`` over all
        thresholds (nan without positives).
    """
    labels = np.asarray(labels, dtype=bool)
    called = np.asarray(probabilities) > threshold
    tp, fp = int((labels & called).sum()), int((~labels & called).sum())
    fn, tn = int((labels & ~called).sum()), int((~labels & ~called).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    both_classes = labels.any() and not labels.all()
    return {
        "threshold": threshold, "n_candidates": int(labels.size), "n_positive": tp + fn,
        "roc_auc": float(roc_auc_score(labels, probabilities)) if both_classes else math.nan,
        "average_precision": float(average_precision_score(labels, probabilities)) if both_classes else math.nan,
        "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "true_positives": tp, "false_positives": fp, "false_negatives": fn, "true_negatives": tn,
        "min_precision": GOAL_PRECISION,
        "recall_at_precision": recall_at_precision(labels, np.asarray(probabilities)),
    }


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

    Per-candidate figures use every candidate of the evaluated scans (not only the 100 scored per
    scan), labelled by whether it hits a nodule; candidates that hit only an excluded finding are
    left out.
    """
    matches = match_candidates(predictions.series_uids, predictions.centers_xyz, predictions.probabilities,
                               annotations, excluded, series_list)
    froc = froc_from_matches(matches, n_bootstraps, seed)
    classification = classification_metrics(matches.candidate_labels, matches.candidate_probabilities, threshold)
    return Evaluation(froc=froc, classification=classification, matches=matches)


def format_table(evaluation: Evaluation) -> str:
    """The human-readable summary the app prints."""
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
    lines += [
        "",
        f"Per candidate ({cls['n_candidates']:,} candidates, {cls['n_positive']:,} hit a nodule)",
        f"  {'ROC AUC':<30}{cls['roc_auc']:6.3f}",
        f"  {'average precision':<30}{cls['average_precision']:6.3f}",
        f"  {'precision':<30}{cls['precision']:6.3f}   at threshold {cls['threshold']:g}",
        f"  {'recall':<30}{cls['recall']:6.3f}",
        f"  {'F1':<30}{cls['f1']:6.3f}",
        f"  {'recall at precision >= ' + format(cls['min_precision'], 'g'):<30}"
        f"{cls['recall_at_precision']:6.3f}   best over all thresholds",
    ]
    return "\n".join(lines)


def write_figures(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """FROC, ROC, precision-recall and probability histogram PNGs in ``out_dir``."""
    labels = evaluation.matches.candidate_labels
    probs = evaluation.matches.candidate_probabilities
    threshold = evaluation.classification["threshold"]
    return [
        plots.save_figure(plots.froc_figure(evaluation.froc), out_dir / "froc.png"),
        plots.save_figure(plots.roc_figure(labels, probs), out_dir / "roc.png"),
        plots.save_figure(plots.precision_recall_figure(labels, probs, threshold), out_dir / "precision_recall.png"),
        plots.save_figure(plots.probability_histogram_figure(labels, probs, threshold),
                          out_dir / "probability_histogram.png"),
    ]


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


def _probability(text: str) -> float:
    """argparse type: a threshold in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luna evaluate", description="Score a LUNA16 results file: FROC, CPM with bootstrap "
        "intervals, per-candidate ROC/PR figures; prints a table, writes metrics.json and PNGs.",
        formatter_class=HelpFormatter)
    parser.add_argument("--predictions", required=True, type=Path, nargs="+", metavar="CSV",
                        help="results CSV: seriesuid,coordX,coordY,coordZ,probability (world mm; required); "
                             "several files (of different scans) are scored as one pooled set")
    parser.add_argument("--annotations", required=True, type=Path, nargs="+", metavar="CSV",
                        help="nodules CSV: seriesuid,coordX,coordY,coordZ,diameter_mm (required); "
                             "one or more, each scan's nodules in one of them")
    parser.add_argument("--excluded", type=Path, nargs="+", default=None, metavar="CSV",
                        help="findings that are neither hits nor false positives, e.g. annotations_excluded.csv "
                             "(default: none); one or more")
    parser.add_argument("--series-list", type=Path, nargs="+", default=None, metavar="FILE",
                        help="scans to evaluate, one uid per line or a CSV with a seriesuid column; several: "
                             "their union (default: every scan in the annotations or the predictions)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where metrics.json and the PNGs go (default: <predictions stem>_eval "
                             "next to the (first) predictions file)")
    parser.add_argument("--threshold", type=_probability, default=0.5,
                        help="probability above which a candidate is called a nodule, for precision/recall/F1")
    parser.add_argument("--bootstraps", type=non_negative_int, default=1000,
                        help="bootstrap resamples of the scans for the 95%% intervals (0: none)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the bootstrap resampling ")
    return add_common_args(parser)


class LunaEvaluateApp:
    """Score a results file; see the module docstring."""

    def __init__(self, argv: Sequence[str] | None = None):
        self.args = get_args_parser().parse_args(argv)
        if self.args.out_dir is None:
            predictions = self.args.predictions[0]
            self.args.out_dir = predictions.with_name(predictions.stem + "_eval")

    def main(self) -> Evaluation:
        args = self.args
        log.info("Starting %s, %s", type(self).__name__, args)
        predictions = read_pooled_predictions(args.predictions)
        annotations = read_pooled_findings(args.annotations)
        excluded = read_pooled_findings(args.excluded, "excluded findings") if args.excluded else None
        series_list = None
        if args.series_list:
            # Their union, in the order given: the bootstrap draws scans by position.
            series_list = list(dict.fromkeys(uid for path in args.series_list for uid in read_series_list(path)))
        evaluation = evaluate(predictions, annotations, excluded, series_list, threshold=args.threshold,
                              n_bootstraps=args.bootstraps, seed=args.seed)
        if evaluation.froc.n_nodules == 0:
            raise DataError(f"{_names(args.annotations)}: no nodule in the {evaluation.froc.n_scans} "
                            "evaluated scans, so sensitivity and CPM are undefined")
        if evaluation.matches.n_candidates == 0:
            raise DataError(f"{_names(args.predictions)}: none of the predictions is in an evaluated scan "
                             "(check --series-list)")
        if evaluation.matches.n_ignored_rows:
            log.warning("Ignored %d prediction rows of scans not in the series list",
                        evaluation.matches.n_ignored_rows)

        args.out_dir.mkdir(parents=True, exist_ok=True)
        metrics = {"inputs": {key: _json_input(value) for key, value in vars(args).items() if key != "debug"},
                   **evaluation.to_dict()}
        metrics_path = args.out_dir / METRICS_FILE
        metrics_path.write_text(json.dumps(metrics, indent=1, allow_nan=False) + "\n")
        figures = write_figures(evaluation, args.out_dir)
        print(f"LUNA16 evaluation of {_names(args.predictions)}\n")
        print(format_table(evaluation))
        print(f"\nwrote {metrics_path} and {', '.join(path.name for path in figures)}")
        return evaluation


def _names(paths: Sequence[Path]) -> str:
    return " + ".join(str(path) for path in paths)


def _json_input(value):
    """A flag's value for metrics.json: paths as strings, one path as itself, several as a list."""
    if isinstance(value, list):
        strings = [str(item) for item in value]
        return strings[0] if len(strings) == 1 else strings
    return str(value) if isinstance(value, Path) else value


if __name__ == "__main__":
    sys.exit(run_app(LunaEvaluateApp, prog="luna evaluate"))

"""``luna evaluate``: score LUNA16 results files by the official rules and draw the figures.

    luna evaluate --predictions preds.csv --annotations annotations.csv \\
        --excluded annotations_excluded.csv [--series-list seriesuids.csv] [--out-dir DIR]

Prints a table (CPM and the sensitivity at each of the seven FP rates with 95% bootstrap
intervals, counts, and per-candidate ROC AUC, average precision, precision, recall and F1) and
writes ``metrics.json`` plus PNG figures to the output directory.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from luna.cli.common import add_common_args, fraction, new_parser, non_negative_int, run_app
from luna.errors import DataError
from luna.eval.evaluation import Evaluation, evaluate, format_table, read_pooled_findings, read_pooled_predictions
from luna.luna16.csvfiles import read_series_list
from luna.report.evaluation_files import write_evaluation

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "luna evaluate", "Score LUNA16 results files: FROC, CPM with bootstrap intervals, per-candidate "
        "ROC/PR figures; prints a table, writes metrics.json and PNGs. Several files of each kind (the folds "
        "of a cross-validation, held-out sets made apart) are scored as one pooled set.")
    parser.add_argument("--predictions", required=True, type=Path, nargs="+", metavar="CSV",
                        help="results CSV: seriesuid,coordX,coordY,coordZ,probability (world mm, probability in "
                             "[0, 1]); several files (of different scans) are scored as one pooled set; required")
    parser.add_argument("--annotations", required=True, type=Path, nargs="+", metavar="CSV",
                        help="nodules CSV: seriesuid,coordX,coordY,coordZ,diameter_mm; one or more, each scan's "
                             "nodules in one of them; required")
    parser.add_argument("--excluded", type=Path, nargs="+", default=None, metavar="CSV",
                        help="findings that are neither hits nor false positives, e.g. annotations_excluded.csv "
                             "(default: none); one or more")
    parser.add_argument("--series-list", type=Path, nargs="+", default=None, metavar="FILE",
                        help="scans to evaluate, one uid per line or a CSV with a seriesuid column; several: their "
                             "union. Default: the scans in the predictions (annotated scans without predictions "
                             "are left out, and the log says how many; name them here to count their nodules "
                             "as missed)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where metrics.json and the PNGs go (default: <predictions stem>_eval "
                             "next to the (first) predictions file)")
    parser.add_argument("--threshold", type=fraction, default=0.5,
                        help="probability above which a candidate is called a nodule, for precision/recall/F1")
    parser.add_argument("--bootstraps", type=non_negative_int, default=1000,
                        help="bootstrap resamples of the scans for the 95%% intervals (0: none)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the bootstrap resampling")
    return add_common_args(parser)


class LunaEvaluateApp:
    """Score results files; see the module docstring."""

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
        inputs = {key: _json_input(value) for key, value in vars(args).items() if key != "debug"}
        metrics_path, figures = write_evaluation(evaluation, args.out_dir, inputs)
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

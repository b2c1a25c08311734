"""``luna report RUN_DIR``: one self-contained HTML page per training run.

    luna report runs/luna/2024-05-01_10.00.00-luna [--out FILE] [--annotations A.csv]
        [--excluded E.csv] [--bootstraps 200]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from luna.atomic import write_text_atomic
from luna.cli.common import add_common_args, new_parser, non_negative_int, run_app
from luna.luna16.paths import REPORT_NAME, detections_name
from luna.report.page import render_report
from luna.report.run_record import read_final_evaluation, read_run, score_predictions

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "luna report", "Write one self-contained HTML page (embedded figures, no JavaScript) for a training run: "
        "headline numbers, curves, final FROC/ROC/PR figures, per-epoch table, arguments. The final figures are "
        "luna evaluate's when RUN_DIR/eval/metrics.json exists, else those of the training's last validation "
        "(val_predictions.csv, scored here).")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="run directory written by luna train (holds summary.csv, run.json, last.pt)")
    parser.add_argument("--out", type=Path, default=None, help=f"HTML file to write (default: RUN_DIR/{REPORT_NAME})")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="nodules CSV for scoring val_predictions.csv (default: the training run's, else "
                             "found in its data dir)")
    parser.add_argument("--excluded", type=Path, default=None,
                        help="annotations_excluded.csv (default: the training run's, else found in its "
                             "data dir, if any)")
    parser.add_argument("--bootstraps", type=non_negative_int, default=200,
                        help="bootstrap resamples of the scans for the CPM interval of val_predictions.csv "
                             "(0: none)")
    return add_common_args(parser)


class LunaReportApp:
    """Write the HTML report of one training run; see the module docstring."""

    def __init__(self, argv: Sequence[str] | None = None):
        self.args = get_args_parser().parse_args(argv)
        if self.args.out is None:
            self.args.out = self.args.run_dir / REPORT_NAME

    def main(self) -> Path:
        args = self.args
        log.info("Starting %s, %s", type(self).__name__, args)
        run = read_run(args.run_dir)
        final = read_final_evaluation(run)
        evaluation = None
        if final is not None:
            log.info("Showing the final evaluation %s", final.metrics_path)
        else:
            threshold = (run.args or {}).get("threshold")
            threshold = 0.5 if not isinstance(threshold, (int, float)) else float(threshold)
            evaluation = score_predictions(run, args.annotations, args.excluded, args.bootstraps, threshold)
        for note in run.notes:
            log.warning("%s", note)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # The detection track, when `luna detect` has left its findings on the held-out scans here.
        threshold = (run.args or {}).get("threshold")
        threshold = 0.5 if not isinstance(threshold, (int, float)) else float(threshold)
        detection = score_predictions(run, args.annotations, args.excluded, args.bootstraps, threshold,
                                      name=detections_name("val"), required=False)
        path = write_text_atomic(args.out, render_report(run, evaluation, final, detection))
        log.info("Wrote report %s", path)
        return path


if __name__ == "__main__":
    sys.exit(run_app(LunaReportApp, prog="luna report"))

"""Where a training run's metrics go: TensorBoard event files and a per-epoch summary CSV.

TensorBoard follows the reference: one writer for training and one for validation, in
``<runs>/<prefix>/<time>-trn_cls-<comment>`` and ``...-val_cls-<comment>``, created only when the
first metrics are written so that a run that dies early leaves no empty junk runs. The x axis is
the number of training samples seen, not the epoch. ``single_writer`` puts both in one run with
``trn/`` and ``val/`` in front of the tags instead.

Resuming passes ``purge_step`` so TensorBoard hides whatever an interrupted run wrote after its
last checkpoint: the step axis then has no duplicated points.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import torch

from luna.atomic import write_text_atomic
from luna.metrics import METRICS_LABEL_NDX, METRICS_PRED_NDX, RECALL_AT_GOAL_KEY

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
# Scalars written per mode; the reference's six come first.
SCALAR_TAGS = ("loss/all", "loss/neg", "loss/pos", "correct/all", "correct/neg", "correct/pos",
               "pr/precision", "pr/recall", "pr/f1_score", "auc/roc", "auc/pr", RECALL_AT_GOAL_KEY, "froc/cpm")


class RunLogger:
    """TensorBoard writers (lazy) and the summary CSV of one run.

    Args:
        tb_dir: ``<runs>/<tb-prefix>``.
        run_name: ``<time>`` part; the writers are ``<run_name>-{trn,val}_cls-<comment>``.
        comment: free text from the command line.
        run_dir: where ``summary.csv`` lives (next to the checkpoints).
        single_writer: one writer, ``trn/`` and ``val/`` in the tag names.
        purge_step: on resume, the samples-seen of the checkpoint + 1.
    """

    def __init__(self, tb_dir: Path, run_name: str, comment: str, run_dir: Path,
                 single_writer: bool = False, purge_step: int | None = None):
        self.tb_dir, self.run_name, self.comment = Path(tb_dir), run_name, comment
        self.run_dir = Path(run_dir)
        self.single_writer = single_writer
        self.purge_step = purge_step
        self._writers: dict[str, object] = {}

    def _writer(self, mode: str):
        key = "all" if self.single_writer else mode
        if key not in self._writers:
            from torch.utils.tensorboard import SummaryWriter  # slow import; only when needed
            suffix = "cls" if self.single_writer else f"{mode}_cls"
            log_dir = self.tb_dir / f"{self.run_name}-{suffix}-{self.comment}"
            self._writers[key] = SummaryWriter(log_dir=str(log_dir), purge_step=self.purge_step)
        return self._writers[key]

    def _tag(self, mode: str, name: str) -> str:
        return f"{mode}/{name}" if self.single_writer else name

    def log_epoch(self, mode: str, metrics: dict[str, float], metrics_t: torch.Tensor, step: int) -> None:
        """Scalars, the precision-recall curve and the two histograms of one mode and epoch."""
        writer = self._writer(mode)
        for tag in SCALAR_TAGS:
            if tag in metrics and np.isfinite(metrics[tag]):
                writer.add_scalar(self._tag(mode, tag), metrics[tag], step)
        labels = metrics_t[METRICS_LABEL_NDX].numpy() > 0.5
        preds = metrics_t[METRICS_PRED_NDX].float().numpy()
        writer.add_pr_curve(self._tag(mode, "pr"), labels, preds, step)
        bins = np.linspace(0, 1, 51)
        # As the reference: skip the (many) confident-and-right samples, show the doubtful ones.
        neg = preds[~labels & (preds > 0.01)]
        pos = preds[labels & (preds < 0.99)]
        if neg.size:
            writer.add_histogram(self._tag(mode, "is_neg"), neg, step, bins=bins)
        if pos.size:
            writer.add_histogram(self._tag(mode, "is_pos"), pos, step, bins=bins)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    # -- summary.csv: one row per epoch ------------------------------------------------------
    @property
    def summary_path(self) -> Path:
        return self.run_dir / SUMMARY_NAME

    def append_summary(self, row: dict) -> None:
        """Append one epoch's row; the header is written with the first row. Rewritten
        atomically so an interrupted write never leaves a torn file."""
        rows = read_summary(self.summary_path)
        rows.append({k: _fmt(v) for k, v in row.items()})
        _write_rows(self.summary_path, rows)

    def truncate_summary(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (written by a run killed after its last checkpoint)."""
        rows = [r for r in read_summary(self.summary_path) if int(r["epoch"]) <= last_epoch]
        if self.summary_path.exists():
            _write_rows(self.summary_path, rows)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_summary(path: Path) -> list[dict[str, str]]:
    """Rows of a run's summary.csv (empty when there is none yet)."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())

"""Where a training run's metrics go: log lines, TensorBoard event files and a per-epoch summary CSV.

Log lines follow the reference's shape (:func:`format_epoch_lines`), with precision, recall, F1
and ROC AUC added to the first line.

TensorBoard follows the reference: one writer for training and one for validation, in
``<runs>/<prefix>/<time>-trn_cls-<comment>`` and ``...-val_cls-<comment>`` (``_seg`` for a
segmentation run), created only when the first metrics are written so that a run that dies
early leaves no empty junk runs. The x axis is the number of training samples seen, not the
epoch. ``single_writer`` puts both in one run with
``trn/`` and ``val/`` in front of the tags instead.

Resuming passes ``purge_step`` so TensorBoard hides whatever an interrupted run wrote after its
last checkpoint: the step axis then has no duplicated points.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from luna.eval.metrics import RECALL_AT_GOAL_KEY
from luna.runtime.rundir import append_summary_row, truncate_summary
from luna.train.engine import METRICS_LABEL_NDX, METRICS_PRED_NDX

log = logging.getLogger(__name__)
# Scalars written per mode; the reference's six come first.
SCALAR_TAGS = ("loss/all", "loss/neg", "loss/pos", "correct/all", "correct/neg", "correct/pos",
               "pr/precision", "pr/recall", "pr/f1_score", "auc/roc", "auc/pr", RECALL_AT_GOAL_KEY, "froc/cpm")


def format_epoch_lines(epoch: int, mode: str, metrics: dict) -> list[str]:
    """The reference's three log lines for one epoch and mode.

    Args:
        epoch: 1-based epoch number.
        mode: ``"trn"`` or ``"val"`` (any short name; padded to 8 characters).
        metrics: a dict from :func:`luna.eval.metrics.classifier_metrics` with losses.

    Returns:
        Three lines (no newlines): all samples, negatives, positives. The all-line also shows
        precision, recall, F1 and ROC AUC.
    """
    lines = [
        f"E{epoch} {mode:8} {metrics['loss/all']:.4f} loss, {metrics['correct/all']:-5.1f}% correct, "
        f"{metrics['pr/precision']:.4f} precision, {metrics['pr/recall']:.4f} recall, "
        f"{metrics['pr/f1_score']:.4f} f1 score, {metrics['auc/roc']:.4f} auc"
    ]
    for kind in ("neg", "pos"):
        correct = int(metrics[f"{kind}_correct"])
        count = int(metrics[f"{kind}_count"])
        lines.append(
            f"E{epoch} {mode + '_' + kind:8} {metrics['loss/' + kind]:.4f} loss, "
            f"{metrics['correct/' + kind]:-5.1f}% correct ({correct} of {count})"
        )
    return lines


class RunLogger:
    """TensorBoard writers (lazy) and the summary CSV of one run.

    Args:
        tb_dir: ``<runs>/<tb-prefix>``.
        run_name: ``<time>`` part; the writers are ``<run_name>-{trn,val}_cls-<comment>``.
        comment: free text from the command line.
        run_dir: where ``summary.csv`` lives (next to the checkpoints).
        single_writer: one writer, ``trn/`` and ``val/`` in the tag names.
        purge_step: on resume, the samples-seen of the checkpoint + 1.
        kind: what the run trains, in the writers' names: ``cls`` (the classifier) or ``seg``.
    """

    def __init__(self, tb_dir: Path, run_name: str, comment: str, run_dir: Path,
                 single_writer: bool = False, purge_step: int | None = None, kind: str = "cls"):
        self.tb_dir, self.run_name, self.comment = Path(tb_dir), run_name, comment
        self.run_dir = Path(run_dir)
        self.single_writer = single_writer
        self.purge_step = purge_step
        self.kind = kind
        self._writers: dict[str, object] = {}

    def _writer(self, mode: str):
        key = "all" if self.single_writer else mode
        if key not in self._writers:
            from torch.utils.tensorboard import SummaryWriter  # slow import; only when needed
            suffix = self.kind if self.single_writer else f"{mode}_{self.kind}"
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

    def log_scalars(self, mode: str, metrics: dict[str, float], step: int) -> None:
        """Every finite number of ``metrics`` as a scalar of its own name."""
        writer = self._writer(mode)
        for tag, value in metrics.items():
            if isinstance(value, (int, float)) and np.isfinite(value):
                writer.add_scalar(self._tag(mode, tag), value, step)

    def log_image(self, mode: str, tag: str, image_chw: np.ndarray, step: int) -> None:
        """One (3, H, W) RGB image with values in [0, 1]."""
        self._writer(mode).add_image(self._tag(mode, tag), image_chw, step, dataformats="CHW")

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    # -- summary.csv: one row per epoch ------------------------------------------------------
    def append_summary(self, row: dict) -> None:
        """Append one epoch's row to ``run_dir/summary.csv`` (see :mod:`luna.runtime.rundir`)."""
        append_summary_row(self.run_dir, row)

    def truncate_summary(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (written by a run killed after its last checkpoint)."""
        truncate_summary(self.run_dir, last_epoch)

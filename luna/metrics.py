"""Per-epoch metrics from the per-sample (label, prediction, loss) records, and their log lines.

Training and validation loops fill a (3, N) float tensor on the device, one column per sample,
and move it to the CPU once per epoch; :func:`compute_epoch_metrics` turns it into a flat dict of
plain Python numbers (safe for JSON and TensorBoard), and :func:`format_epoch_lines` writes the
reference's three log lines from that dict.

Accuracy alone is misleading at ~400 negatives per positive, so the dict also carries
precision, recall, F1 and the ranking metrics (ROC AUC, average precision).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

log = logging.getLogger(__name__)

METRICS_LABEL_NDX = 0
METRICS_PRED_NDX = 1
METRICS_LOSS_NDX = 2
METRICS_SIZE = 3

NAN = float("nan")

# The operating point the project's quality goal names: how many nodules are found while at
# least 30% of what is called a nodule really is one.
GOAL_PRECISION = 0.3
RECALL_AT_GOAL_KEY = f"pr/recall_at_p{GOAL_PRECISION:g}"


def _mean(values: np.ndarray) -> float:
    # An empty class has no mean loss: nan says "undefined" without a RuntimeWarning.
    return float(values.mean()) if values.size else NAN


def _percent(part: int, whole: int) -> float:
    return part / whole * 100.0 if whole else NAN


def _ratio_or_zero(part: int, whole: int) -> float:
    # Same convention as scikit-learn's zero_division=0: "no predicted positives" scores 0, so that
    # picking the best epoch by F1 never has to compare against nan.
    return part / whole if whole else 0.0


def _ranking_metrics(is_pos: np.ndarray, preds: np.ndarray) -> tuple[float, float]:
    """ROC AUC and average precision, or nan where they are undefined.

    scikit-learn raises (ROC) or warns (AP) when only one class is present, and raises on
    non-finite scores (a diverged model); both are answered with nan instead.
    """
    if is_pos.all() or not is_pos.any() or not np.isfinite(preds).all():
        return NAN, NAN
    return float(roc_auc_score(is_pos, preds)), float(average_precision_score(is_pos, preds))


def recall_at_precision(is_pos: np.ndarray, preds: np.ndarray, min_precision: float = GOAL_PRECISION) -> float:
    """The best recall over all thresholds whose precision is at least ``min_precision``.

    Args:
        is_pos: (N,) bool labels.
        preds: (N,) scores; higher means "more likely a nodule".
        min_precision: the precision the threshold must keep.

    Returns:
        The recall in [0, 1] (0.0 when no threshold keeps that precision); nan without
        positives or with non-finite scores.
    """
    is_pos = np.asarray(is_pos, dtype=bool)
    if not is_pos.any() or not np.isfinite(preds).all():
        return NAN
    precision, recall, _ = precision_recall_curve(is_pos, preds)
    keep = precision >= min_precision
    return float(recall[keep].max()) if keep.any() else 0.0


def compute_epoch_metrics(metrics_t: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Summarise one epoch of per-sample records.

    A label or a prediction is positive when strictly greater than ``threshold`` (the reference
    calls everything ``<= threshold`` negative).

    Args:
        metrics_t: (3, N) tensor on the CPU; rows are label (1 = nodule), predicted nodule
            probability and per-sample loss (see the ``METRICS_*_NDX`` constants).
        threshold: decision threshold on the predicted probability.

    Returns:
        A dict of plain floats: ``loss/all``, ``loss/neg``, ``loss/pos`` (mean loss; nan for an
        empty class), ``correct/all``, ``correct/neg``, ``correct/pos`` (percent; nan for an
        empty class), ``pr/precision``, ``pr/recall``, ``pr/f1_score`` (0.0 where undefined),
        ``auc/roc``, ``auc/pr`` (nan unless both classes are present), ``pr/recall_at_p0.3``
        (see :func:`recall_at_precision`), and the integer counts
        ``neg_count``, ``pos_count``, ``neg_correct``, ``pos_correct``.
    """
    if metrics_t.dim() != 2 or metrics_t.shape[0] != METRICS_SIZE:
        raise ValueError(f"metrics tensor must be ({METRICS_SIZE}, N), got {tuple(metrics_t.shape)}")
    # float64 numpy: exact counts and sums for half a million samples, and what sklearn wants.
    values = metrics_t.detach().to(device="cpu", dtype=torch.float64).numpy()
    labels = values[METRICS_LABEL_NDX]
    preds = values[METRICS_PRED_NDX]
    losses = values[METRICS_LOSS_NDX]

    pos_label = labels > threshold
    pos_pred = preds > threshold
    neg_label = ~pos_label
    neg_pred = ~pos_pred

    neg_count = int(neg_label.sum())
    pos_count = int(pos_label.sum())
    neg_correct = int((neg_label & neg_pred).sum())
    pos_correct = int((pos_label & pos_pred).sum())  # true positives
    false_pos = neg_count - neg_correct

    precision = _ratio_or_zero(pos_correct, pos_correct + false_pos)
    recall = _ratio_or_zero(pos_correct, pos_count)
    f1_score = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    auc_roc, auc_pr = _ranking_metrics(pos_label, preds)

    return {
        "loss/all": _mean(losses),
        "loss/neg": _mean(losses[neg_label]),
        "loss/pos": _mean(losses[pos_label]),
        "correct/all": _percent(neg_correct + pos_correct, labels.size),
        "correct/neg": _percent(neg_correct, neg_count),
        "correct/pos": _percent(pos_correct, pos_count),
        "neg_count": neg_count,
        "pos_count": pos_count,
        "neg_correct": neg_correct,
        "pos_correct": pos_correct,
        "pr/precision": precision,
        "pr/recall": recall,
        "pr/f1_score": f1_score,
        "auc/roc": auc_roc,
        "auc/pr": auc_pr,
        RECALL_AT_GOAL_KEY: recall_at_precision(pos_label, preds) if pos_label.any() and neg_label.any() else NAN,
    }


def format_epoch_lines(epoch: int, mode: str, metrics: dict) -> list[str]:
    """The reference's three log lines for one epoch and mode.

    Args:
        epoch: 1-based epoch number.
        mode: ``"trn"`` or ``"val"`` (any short name; padded to 8 characters).
        metrics: a dict from :func:`compute_epoch_metrics`.

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


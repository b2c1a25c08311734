"""The classifier's figures, from per-sample labels, probabilities and losses: one function, one
set of key names, used by the training log lines, TensorBoard, summary.csv, ``luna evaluate``'s
metrics.json and the report.

Accuracy alone is misleading at ~400 negatives per positive, so the dict also carries
precision, recall, F1 and the ranking metrics (ROC AUC, average precision), and the recall at
the precision the project aims for.

Keys (:data:`METRIC_KEYS`): ``loss/all``, ``loss/neg``, ``loss/pos`` (mean loss, when losses are
given), ``correct/all``, ``correct/neg``, ``correct/pos`` (percent), ``pr/precision``,
``pr/recall``, ``pr/f1_score``, ``auc/roc``, ``auc/pr`` (average precision),
``pr/recall_at_p0.3``, and the counts ``neg_count``, ``pos_count``, ``neg_correct``,
``pos_correct``. A prediction is positive when strictly above the threshold (the reference calls
everything ``<= threshold`` negative).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

NAN = float("nan")

# The operating point the project's quality goal names: how many nodules are found while at
# least 30% of what is called a nodule really is one.
GOAL_PRECISION = 0.3
RECALL_AT_GOAL_KEY = f"pr/recall_at_p{GOAL_PRECISION:g}"

LOSS_KEYS = ("loss/all", "loss/neg", "loss/pos")
METRIC_KEYS = (*LOSS_KEYS, "correct/all", "correct/neg", "correct/pos", "pr/precision", "pr/recall",
               "pr/f1_score", "auc/roc", "auc/pr", RECALL_AT_GOAL_KEY)
COUNT_KEYS = ("neg_count", "pos_count", "neg_correct", "pos_correct")


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
        The recall in [0, 1] (0.0 when no threshold keeps that precision); nan without both
        classes or with non-finite scores.
    """
    is_pos = np.asarray(is_pos, dtype=bool)
    if not is_pos.any() or is_pos.all() or not np.isfinite(preds).all():
        return NAN
    precision, recall, _ = precision_recall_curve(is_pos, preds)
    keep = precision >= min_precision
    return float(recall[keep].max()) if keep.any() else 0.0


def classifier_metrics(labels: np.ndarray, probabilities: np.ndarray, losses: np.ndarray | None = None,
                       threshold: float = 0.5) -> dict[str, float]:
    """Summarise a set of scored samples (one epoch, or every candidate of a results file).

    Args:
        labels: (N,) 1 (or True) for nodules, 0 for the rest.
        probabilities: (N,) predicted nodule probabilities.
        losses: (N,) per-sample losses, or None (the ``loss/*`` keys are then left out).
        threshold: decision threshold on the probability.

    Returns:
        A dict of plain Python numbers with the keys of the module docstring: nan where a figure
        is undefined (an empty class's loss and percent correct, ranking metrics with one class),
        0.0 for precision, recall and F1 without predicted or actual positives.
    """
    # float64: exact counts and sums for half a million samples, and what scikit-learn wants.
    pos_label = np.asarray(labels, dtype=np.float64) > 0.5
    preds = np.asarray(probabilities, dtype=np.float64)
    pos_pred = preds > threshold
    neg_label, neg_pred = ~pos_label, ~pos_pred

    neg_count, pos_count = int(neg_label.sum()), int(pos_label.sum())
    neg_correct = int((neg_label & neg_pred).sum())
    pos_correct = int((pos_label & pos_pred).sum())  # true positives
    precision = _ratio_or_zero(pos_correct, pos_correct + neg_count - neg_correct)
    recall = _ratio_or_zero(pos_correct, pos_count)
    auc_roc, auc_pr = _ranking_metrics(pos_label, preds)
    metrics: dict[str, float] = {}
    if losses is not None:
        losses = np.asarray(losses, dtype=np.float64)
        metrics.update({"loss/all": _mean(losses), "loss/neg": _mean(losses[neg_label]),
                        "loss/pos": _mean(losses[pos_label])})
    metrics.update({
        "correct/all": _percent(neg_correct + pos_correct, pos_label.size),
        "correct/neg": _percent(neg_correct, neg_count),
        "correct/pos": _percent(pos_correct, pos_count),
        "neg_count": neg_count, "pos_count": pos_count, "neg_correct": neg_correct, "pos_correct": pos_correct,
        "pr/precision": precision,
        "pr/recall": recall,
        "pr/f1_score": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
        "auc/roc": auc_roc,
        "auc/pr": auc_pr,
        RECALL_AT_GOAL_KEY: recall_at_precision(pos_label, preds),
    })
    return metrics


def voxel_metrics(true_positive: int, false_positive: int, false_negative: int) -> dict[str, float]:
    """Per-voxel precision, recall and F1 of a segmentation, from its counts at the threshold.

    Keys are the classifier's (``pr/precision``, ``pr/recall``, ``pr/f1_score``) so that logs,
    TensorBoard and the summary name them alike; no predicted (or no true) voxel scores 0.
    """
    precision = _ratio_or_zero(true_positive, true_positive + false_positive)
    recall = _ratio_or_zero(true_positive, true_positive + false_negative)
    f1 = _ratio_or_zero(2 * true_positive, 2 * true_positive + false_positive + false_negative)
    return {"pr/precision": precision, "pr/recall": recall, "pr/f1_score": f1}

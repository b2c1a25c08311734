"""Tests for luna.metrics: epoch metrics on hand-checked tiny tensors and the exact log lines."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from luna.eval.metrics import recall_at_precision
from luna.train.engine import METRICS_LABEL_NDX, METRICS_LOSS_NDX, METRICS_PRED_NDX, METRICS_SIZE, epoch_metrics
from luna.train.runlog import format_epoch_lines


def make_metrics(labels, preds, losses) -> torch.Tensor:
    t = torch.zeros(METRICS_SIZE, len(labels))
    t[METRICS_LABEL_NDX] = torch.tensor(labels, dtype=torch.float32)
    t[METRICS_PRED_NDX] = torch.tensor(preds, dtype=torch.float32)
    t[METRICS_LOSS_NDX] = torch.tensor(losses, dtype=torch.float32)
    return t


# 5 negatives (one wrongly above 0.5, one exactly at 0.5 = negative), 3 positives (2 found).
LABELS = [0, 0, 0, 0, 0, 1, 1, 1]
PREDS = [0.1, 0.2, 0.5, 0.7, 0.3, 0.9, 0.6, 0.4]
LOSSES = [0.5, 1.0, 1.5, 2.0, 0.0, 0.25, 0.75, 2.0]


@pytest.fixture()
def metrics() -> dict:
    return epoch_metrics(make_metrics(LABELS, PREDS, LOSSES))


def test_counts_and_percentages(metrics):
    assert (metrics["neg_count"], metrics["pos_count"]) == (5, 3)
    assert (metrics["neg_correct"], metrics["pos_correct"]) == (4, 2)  # 0.5 is not "above 0.5"
    assert metrics["correct/all"] == pytest.approx(6 / 8 * 100)
    assert metrics["correct/neg"] == pytest.approx(80.0)
    assert metrics["correct/pos"] == pytest.approx(200 / 3)


def test_losses(metrics):
    assert metrics["loss/all"] == pytest.approx(8.0 / 8)
    assert metrics["loss/neg"] == pytest.approx(5.0 / 5)
    assert metrics["loss/pos"] == pytest.approx(3.0 / 3)


def test_precision_recall_f1(metrics):
    # TP 2, FP 1 (0.7), FN 1 (0.4).
    assert metrics["pr/precision"] == pytest.approx(2 / 3)
    assert metrics["pr/recall"] == pytest.approx(2 / 3)
    assert metrics["pr/f1_score"] == pytest.approx(2 / 3)


def test_auc_by_hand(metrics):
    # ROC AUC = fraction of (pos, neg) pairs ranked correctly: 0.9 beats 5; 0.6 beats 4; 0.4 beats 3.
    assert metrics["auc/roc"] == pytest.approx(12 / 15)
    # Average precision: recall steps at 0.9 (P 1/1), 0.6 (P 2/3), 0.4 (P 3/5).
    assert metrics["auc/pr"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_threshold_moves_decisions():
    m = epoch_metrics(make_metrics(LABELS, PREDS, LOSSES), threshold=0.35)
    assert (m["neg_correct"], m["pos_correct"]) == (3, 3)
    assert m["pr/precision"] == pytest.approx(3 / 5)
    assert m["pr/recall"] == pytest.approx(1.0)
    assert m["pr/f1_score"] == pytest.approx(0.75)


def test_plain_json_numbers(metrics):
    assert json.loads(json.dumps(metrics)) == metrics
    assert all(type(v) in (int, float) for v in metrics.values())
    assert set(metrics) == {
        "loss/all", "loss/neg", "loss/pos", "correct/all", "correct/neg", "correct/pos",
        "neg_count", "pos_count", "neg_correct", "pos_correct",
        "pr/precision", "pr/recall", "pr/f1_score", "auc/roc", "auc/pr", "pr/recall_at_p0.3"}


def test_only_negatives_no_predicted_positives_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = epoch_metrics(make_metrics([0, 0, 0], [0.1, 0.2, 0.3], [1.0, 2.0, 3.0]))
    assert m["pos_count"] == 0
    assert math.isnan(m["loss/pos"]) and math.isnan(m["correct/pos"])
    assert m["pr/precision"] == 0.0 and m["pr/recall"] == 0.0 and m["pr/f1_score"] == 0.0
    assert math.isnan(m["auc/roc"]) and math.isnan(m["auc/pr"])
    assert m["correct/all"] == pytest.approx(100.0)


def test_only_positives_and_empty_epoch():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = epoch_metrics(make_metrics([1, 1], [0.9, 0.2], [0.1, 1.6]))
        empty = epoch_metrics(torch.zeros(METRICS_SIZE, 0))
    assert math.isnan(m["loss/neg"]) and math.isnan(m["auc/roc"])
    assert m["pr/precision"] == 1.0 and m["pr/recall"] == 0.5
    assert empty["neg_count"] == empty["pos_count"] == 0
    assert math.isnan(empty["loss/all"]) and math.isnan(empty["correct/all"])


def test_nan_predictions_give_nan_auc_not_an_exception():
    m = epoch_metrics(make_metrics([0, 1], [float("nan"), 0.7], [1.0, 1.0]))
    assert math.isnan(m["auc/roc"]) and m["pos_correct"] == 1


def test_rejects_wrong_shape():
    with pytest.raises(ValueError):
        epoch_metrics(torch.zeros(2, 4))


def test_format_lines_character_for_character(metrics):
    assert format_epoch_lines(3, "val", metrics) == [
        "E3 val      1.0000 loss,  75.0% correct, 0.6667 precision, 0.6667 recall, 0.6667 f1 score, 0.8000 auc",
        "E3 val_neg  1.0000 loss,  80.0% correct (4 of 5)",
        "E3 val_pos  1.0000 loss,  66.7% correct (2 of 3)",
    ]


def test_format_lines_reference_example():
    # The numbers of SPEC's example, fed in directly.
    metrics = {
        "loss/all": 2.4576, "loss/neg": 0.1936, "loss/pos": 924.34,
        "correct/all": 99.7, "correct/neg": 99.9, "correct/pos": 0.2,
        "neg_count": 494743, "pos_count": 1215, "neg_correct": 494289, "pos_correct": 3,
        "pr/precision": 0.0, "pr/recall": 0.0, "pr/f1_score": 0.0, "auc/roc": 0.5, "auc/pr": 0.0,
    }
    assert format_epoch_lines(1, "trn", metrics) == [
        "E1 trn      2.4576 loss,  99.7% correct, 0.0000 precision, 0.0000 recall, 0.0000 f1 score, 0.5000 auc",
        "E1 trn_neg  0.1936 loss,  99.9% correct (494289 of 494743)",
        "E1 trn_pos  924.3400 loss,   0.2% correct (3 of 1215)",
    ]


def test_format_lines_with_empty_class():
    m = epoch_metrics(make_metrics([0, 0], [0.1, 0.9], [0.5, 1.5]))
    lines = format_epoch_lines(1, "trn", m)
    assert lines[0] == ("E1 trn      1.0000 loss,  50.0% correct, 0.0000 precision, 0.0000 recall, "
                        "0.0000 f1 score, nan auc")
    assert lines[2] == "E1 trn_pos  nan loss,   nan% correct (0 of 0)"


def test_recall_at_precision_by_hand():
    # Ranked: pos, neg, pos, neg, neg. Top 1: P 1, R 1/2; top 2: P 1/2, R 1/2; top 3: P 2/3, R 1.
    is_pos = np.array([1, 0, 1, 0, 0], dtype=bool)
    preds = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    assert recall_at_precision(is_pos, preds, 0.3) == 1.0
    assert recall_at_precision(is_pos, preds, 0.7) == 0.5
    assert recall_at_precision(is_pos, -preds, 0.9) == 0.0  # every positive ranked last
    assert math.isnan(recall_at_precision(np.zeros(3, bool), np.arange(3.0)))
    metrics = epoch_metrics(torch.tensor(np.stack([is_pos, preds, preds]), dtype=torch.float32))
    assert metrics["pr/recall_at_p0.3"] == 1.0

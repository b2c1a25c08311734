"""Figures: the key number in the title, the axes a reader expects, PNGs that open."""
from __future__ import annotations

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from luna.eval.froc import compute_froc
from luna.luna16.rules import FP_RATES
from luna.report.plots import froc_figure, precision_recall_figure, probability_histogram_figure, roc_figure, save_figure, training_curves_figure


@pytest.fixture
def froc_result():
    rng = np.random.default_rng(0)
    ann = {f"s{s}": np.array([[0, 0, 0, 10.0], [40, 0, 0, 8.0]]) for s in range(10)}
    uids, centers, probs = [], [], []
    for uid in ann:
        for xyz, p in [((0, 0, 0), rng.uniform(0.4, 1)), ((40, 0, 0), rng.uniform(0.1, 1))]:
            uids.append(uid), centers.append(xyz), probs.append(p)
        for _ in range(20):
            uids.append(uid), centers.append(rng.uniform(100, 200, 3)), probs.append(rng.uniform(0, 0.6))
    return compute_froc(uids, np.array(centers, float), np.array(probs), ann, n_bootstraps=100)


@pytest.fixture
def scores():
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(20, bool), np.zeros(500, bool)]
    return labels, np.where(labels, rng.beta(5, 2, labels.size), rng.beta(1, 6, labels.size))


def test_froc_figure_has_cpm_and_interval_in_title_on_a_log_axis(froc_result, tmp_path):
    fig = froc_figure(froc_result)
    ax = fig.axes[0]
    low, high = froc_result.ci.cpm
    assert ax.get_title() == f"FROC — CPM {froc_result.cpm:.3f} [{low:.3f}, {high:.3f}]"
    assert ax.get_xscale() == "log" and ax.get_xlabel() and ax.get_ylabel() == "Sensitivity"
    markers = [line for line in ax.get_lines() if line.get_label() == "CPM rates"][0]
    np.testing.assert_array_equal(markers.get_xdata(), FP_RATES)
    np.testing.assert_array_equal(markers.get_ydata(), [froc_result.sensitivity_at[r] for r in FP_RATES])
    path = save_figure(fig, tmp_path / "sub" / "froc.png")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 400 and height > 300


def test_froc_figure_without_interval_or_marks(tmp_path):
    empty = compute_froc([], np.zeros((0, 3)), np.zeros(0), {"a": np.array([[0, 0, 0, 5.0]])})
    fig = froc_figure(empty)
    assert fig.axes[0].get_title() == "FROC — CPM 0.000"
    assert save_figure(fig, tmp_path / "f.png").stat().st_size > 0


def test_roc_and_precision_recall_titles_carry_auc_and_ap(scores):
    from sklearn.metrics import average_precision_score, roc_auc_score
    labels, probs = scores
    assert roc_figure(labels, probs).axes[0].get_title() == f"ROC — AUC {roc_auc_score(labels, probs):.3f}"
    pr_ax = precision_recall_figure(labels, probs, threshold=0.5).axes[0]
    assert pr_ax.get_title() == f"Precision–recall — AP {average_precision_score(labels, probs):.3f}"
    assert any(line.get_label().startswith("threshold 0.5") for line in pr_ax.get_lines())


def test_one_class_curves_say_undefined(tmp_path):
    labels, probs = np.zeros(5, bool), np.linspace(0, 1, 5)
    for fig in (roc_figure(labels, probs), precision_recall_figure(labels, probs)):
        assert "undefined" in fig.axes[0].get_title()
        save_figure(fig, tmp_path / "x.png")


def test_histogram_is_log_scaled_with_one_bar_set_per_class(scores):
    labels, probs = scores
    ax = probability_histogram_figure(labels, probs, threshold=0.3).axes[0]
    assert ax.get_yscale() == "log"
    assert "20 candidates on a nodule" in ax.get_title() and "500 others" in ax.get_title()
    heights = [sum(p.get_height() for p in container) for container in ax.containers]
    assert heights == [500, 20]
    assert not any("suppressed" in text.get_text() for text in ax.texts)  # unknown: no claim


def test_histogram_of_suppressed_scores_says_where_the_twins_are(scores):
    ax = probability_histogram_figure(*scores, suppression_mm=10).axes[0]
    (note,) = [text.get_text() for text in ax.texts if "suppressed" in text.get_text()]
    assert "within 10 mm" in note and "below 0.1" in note
    assert not any("suppressed" in text.get_text()
                   for text in probability_histogram_figure(*scores, suppression_mm=0).axes[0].texts)


def _froc_line(fig):
    (line,) = [line for line in fig.axes[0].get_lines() if line.get_label() == "FROC"]
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def test_froc_curve_starts_at_its_first_real_point_not_at_zero_on_the_left_edge():
    # Two scans, each nodule scored above every false positive: sensitivity 1 before the first one.
    ann = {"a": np.array([[0, 0, 0, 10.0]]), "b": np.array([[0, 0, 0, 10.0]])}
    uids = ["a", "a", "a", "b", "b"]
    centers = np.array([[0, 0, 0], [90, 0, 0], [150, 0, 0], [0, 0, 0], [90, 0, 0]], float)
    result = compute_froc(uids, centers, np.array([0.9, 0.5, 0.2, 0.8, 0.4]), ann)
    fig = froc_figure(result)
    xs, ys = _froc_line(fig)
    x_min = fig.axes[0].get_xlim()[0]
    assert xs[0] == x_min and ys[0] == 1.0  # no rise from 0 drawn up the left edge
    assert (xs == x_min).sum() == 1


def test_log_axis_has_a_tick_label_at_its_lowest_point():
    rows = [{"epoch": e, "trn/loss/all": v, "val/loss/all": v * 1.2} for e, v in enumerate([0.7, 0.2, 0.05, 0.02], 1)]
    ax = training_curves_figure(rows).axes[0]
    assert ax.get_yscale() == "log"
    bottom, top = ax.get_ylim()
    labelled = [tick for tick, label in zip(ax.get_yticks(), ax.get_yticklabels())
                if label.get_text() and bottom <= tick <= top]
    assert bottom <= min(labelled) <= 0.02  # a label at or below the lowest loss, inside the axis


def test_curves_mark_best_pt_and_call_no_other_epoch_best():
    rows = [{"epoch": e, "val/auc/roc": v} for e, v in enumerate([0.9, 0.97, 0.95], 1)]
    ax = training_curves_figure(rows, marked_epoch=3).axes[0]
    assert ax.get_title() == "ROC AUC — highest val 0.970 (epoch 2)" and "best" not in ax.get_title()
    (mark,) = [line for line in ax.get_lines() if line.get_label() == "best.pt (epoch 3)"]
    assert list(mark.get_xdata()) == [3, 3]


def test_training_curves_from_long_or_wide_rows(tmp_path):
    long_rows = [{"epoch": e, "mode": m, "loss/all": 1 / e + (m == "val"), "pr/f1_score": e / 10,
                  "auc/roc": 0.5 + e / 20, "cpm": (e / 8 if m == "val" else None)}
                 for e in (1, 2, 3) for m in ("trn", "val")]
    wide_rows = [{"epoch": e, "trn/loss/all": 1 / e, "val_loss": 2 / e, "val/cpm": [0.2, 0.6, 0.4][e - 1]}
                 for e in (1, 2, 3)]
    long_fig = training_curves_figure(long_rows)
    titles = [ax.get_title() for ax in long_fig.axes if ax.get_visible()]
    assert titles[0] == "Loss — lowest val 1.333 (epoch 3)"
    assert titles[3] == "CPM (LUNA16) — highest val 0.375 (epoch 3)"
    cpm_lines = long_fig.axes[3].get_lines()
    assert [line.get_label() for line in cpm_lines] == ["val"]  # trn has no CPM
    wide_fig = training_curves_figure(wide_rows)
    wide_titles = [ax.get_title() for ax in wide_fig.axes if ax.get_visible()]
    assert wide_titles == ["Loss — lowest val 0.667 (epoch 3)", "CPM (LUNA16) — highest val 0.600 (epoch 2)"]
    save_figure(long_fig, tmp_path / "curves.png")
    save_figure(training_curves_figure([]), tmp_path / "none.png")


def test_figures_do_not_touch_pyplot(froc_result, scores):
    before = plt.get_fignums()
    froc_figure(froc_result)
    roc_figure(*scores)
    training_curves_figure([{"epoch": 1, "mode": "val", "loss/all": 0.3}])
    assert plt.get_fignums() == before

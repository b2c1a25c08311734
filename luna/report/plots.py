"""Figures as PNG files: FROC with its bootstrap band, ROC, precision-recall, probability
histograms, and per-epoch training curves.

Each ``*_figure`` function builds one figure whose title carries its key number;
:func:`save_figure` writes it as a PNG::

    save_figure(froc_figure(result), out_dir / "froc.png")

Figures are built with matplotlib's object API (``Figure``, rendered by Agg when saved), never
through ``pyplot``: nothing here changes the global backend or keeps figures open, so a notebook,
a report or a training loop can call these functions as often as it likes.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from luna.atomic import atomic_open
from luna.eval.froc import FrocResult
from luna.luna16.rules import FP_RATES

DPI = 120
FIGSIZE = (6.4, 4.8)
NODULE_COLOR = "tab:red"
OTHER_COLOR = "tab:blue"
# Default panels of the training curves: title -> metric keys tried in order (luna.eval.metrics names first).
TRAINING_PANELS: dict[str, tuple[str, ...]] = {
    "Loss": ("loss/all", "loss"),
    "F1 score": ("pr/f1_score", "f1"),
    "ROC AUC": ("auc/roc", "auc"),
    "CPM (LUNA16)": ("cpm", "froc/cpm"),
}
MODE_COLORS = {"trn": "tab:blue", "val": "tab:orange"}


def png_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG bytes (for a page, or ``IPython.display.Image`` in a notebook)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically, creating its folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _axes(title: str, xlabel: str, ylabel: str, figsize: tuple[float, float] = FIGSIZE):
    fig = Figure(figsize=figsize)
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def _rate_label(rate: float) -> str:
    return f"1/{round(1 / rate)}" if rate < 1 else f"{rate:g}"


def _both_classes(labels: np.ndarray) -> bool:
    return bool(labels.any() and not labels.all())


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def froc_figure(result: FrocResult) -> Figure:
    """FROC curve on a log FP axis with its bootstrap band, the seven CPM rates marked.

    Args:
        result: from :func:`luna.froc.compute_froc` (with ``ci`` for the band).
    """
    title = f"FROC — CPM {result.cpm:.3f}"
    if result.ci is not None:
        title += f" [{result.ci.cpm[0]:.3f}, {result.ci.cpm[1]:.3f}]"
    fig, ax = _axes(title, "Average false positives per scan", "Sensitivity")
    x_min = FP_RATES[0] / 4
    x_max = max(FP_RATES[-1] * 2, float(result.fps_per_scan[-1]) * 1.2 if len(result.fps_per_scan) else 0)
    ax.set_xscale("log")
    if result.ci is not None:
        ci = result.ci
        ax.fill_between(ci.band_fps, ci.band_lower, ci.band_upper, step="post", alpha=0.25,
                        color=OTHER_COLOR, lw=0, label=f"{ci.level:.0%} bootstrap band ({ci.n_bootstraps:,} resamples)")
    if len(result.fps_per_scan):
        # Points left of the axis (0 FP/scan cannot sit on a log axis) are read at its left edge:
        # the curve starts there at the sensitivity they reach, with no rise drawn up the edge
        # (that would read as sensitivity 0 at the lowest rate), and ends flat at its last point.
        fps, sens = np.asarray(result.fps_per_scan), np.asarray(result.sensitivity)
        left = fps < x_min
        start_fps, start_sens = ([x_min], [sens[left][-1]]) if left.any() else ([], [])
        ax.step(np.r_[start_fps, fps[~left], x_max], np.r_[start_sens, sens[~left], sens[-1]], where="post",
                color=OTHER_COLOR, lw=2, label="FROC")
    rates = list(result.sensitivity_at)
    readings = [result.sensitivity_at[rate] for rate in rates]
    ax.plot(rates, readings, "o", color=NODULE_COLOR, zorder=3, label="CPM rates")
    for rate, value in zip(rates, readings):
        ax.annotate(f"{value:.2f}", (rate, value), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=8)
    if result.n_nodules:
        ax.axhline(result.n_found / result.n_nodules, color="gray", ls="--", lw=1,
                   label=f"ceiling: {result.n_found} of {result.n_nodules} nodules hit")
    ticks = 2.0 ** np.arange(np.ceil(np.log2(x_min)), np.floor(np.log2(x_max)) + 1)
    ax.set_xticks(ticks, [_rate_label(tick) for tick in ticks])
    ax.minorticks_off()
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    ax.text(0.01, 0.99, f"{result.n_scans:,} scans, {result.n_nodules:,} nodules, {result.n_candidates:,} candidates",
            transform=ax.transAxes, va="top", fontsize=8, color="gray")
    return fig


def roc_figure(labels: np.ndarray, probabilities: np.ndarray) -> Figure:
    """Per-candidate ROC curve; the title gives the AUC.

    Args:
        labels: (N,) bool, True for nodules.
        probabilities: (N,) predicted nodule probabilities.
    """
    labels = np.asarray(labels, dtype=bool)
    if not _both_classes(labels):
        fig, ax = _axes("ROC — undefined", "False positive rate", "True positive rate")
        _note(ax, "needs both nodules and non-nodules")
        return fig
    fpr, tpr, _ = roc_curve(labels, probabilities)
    fig, ax = _axes(f"ROC — AUC {roc_auc_score(labels, probabilities):.3f}",
                    "False positive rate", "True positive rate")
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1, label="chance")
    ax.plot(fpr, tpr, color=OTHER_COLOR, lw=2, label=_class_counts(labels))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def precision_recall_figure(labels: np.ndarray, probabilities: np.ndarray,
                            threshold: float = 0.5) -> Figure:
    """Per-candidate precision-recall curve, the operating point at ``threshold`` marked.

    Args:
        labels: (N,) bool, True for nodules.
        probabilities: (N,) predicted nodule probabilities.
        threshold: a candidate is called a nodule when its probability is strictly above it.
    """
    labels = np.asarray(labels, dtype=bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not _both_classes(labels):
        fig, ax = _axes("Precision–recall — undefined", "Recall", "Precision")
        _note(ax, "needs both nodules and non-nodules")
        return fig
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    average_precision = average_precision_score(labels, probabilities)
    fig, ax = _axes(f"Precision–recall — AP {average_precision:.3f}", "Recall", "Precision")
    ax.step(recall, precision, where="post", color=OTHER_COLOR, lw=2)
    ax.axhline(labels.mean(), color="gray", ls=":", lw=1, label=f"chance ({labels.mean():.4f})")
    called = probabilities > threshold
    if called.any():
        op_precision = (labels & called).sum() / called.sum()
        op_recall = (labels & called).sum() / labels.sum()
        ax.plot(op_recall, op_precision, "o", color=NODULE_COLOR, zorder=3,
                label=f"threshold {threshold:g}: precision {op_precision:.2f}, recall {op_recall:.2f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def probability_histogram_figure(labels: np.ndarray, probabilities: np.ndarray,
                                 threshold: float = 0.5, bins: int = 50,
                                 suppression_mm: float | None = None) -> Figure:
    """Histograms of predicted probabilities, candidates on a nodule and the others apart, log counts.

    Args:
        labels: (N,) bool, True for candidates that hit a nodule.
        probabilities: (N,) predicted nodule probabilities, expected in [0, 1].
        threshold: drawn as a vertical line.
        bins: bins over [0, 1].
        suppression_mm: the radius the scores were suppressed with (a candidate near a
            higher-scoring one keeps 0.1 of its score), 0 when they were not, None when unknown;
            a radius puts a note on the figure, since the twins of each found nodule then pile up
            below 0.1.
    """
    labels = np.asarray(labels, dtype=bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    fig, ax = _axes(f"Predicted probabilities — {_class_counts(labels)}",
                    "Predicted nodule probability", "Candidates (log scale)")
    edges = np.linspace(0, 1, bins + 1)
    clipped = np.clip(probabilities, 0, 1)  # scores outside [0, 1] land in the end bins
    for mask, color, name in ((~labels, OTHER_COLOR, "other candidates"),
                              (labels, NODULE_COLOR, "candidates on a nodule")):
        if mask.any():
            ax.hist(clipped[mask], bins=edges, color=color, alpha=0.55, label=f"{name} ({mask.sum():,})")
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    counts = [n for container in ax.containers for n in (bar.get_height() for bar in container) if n > 0]
    if counts:
        _label_log_axis(ax, [1, *counts], pad=2.0)  # a bar of one candidate must still show, and "1" be labelled
    ax.set_xlim(0, 1)
    if suppression_mm:
        ax.text(0.99, 0.70, f"suppressed within {suppression_mm:g} mm: the twins of a found nodule\n"
                            "keep 0.1 of their score, so candidates on a nodule\npile up below 0.1",
                transform=ax.transAxes, ha="right", va="top", fontsize=7, color="dimgray",
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
    ax.legend(loc="upper center", fontsize=8)
    return fig


def _class_counts(labels: np.ndarray) -> str:
    """Candidates, not nodules: several candidates can hit one nodule, and some nodules none."""
    return f"{labels.sum():,} candidates on a nodule, {(~labels).sum():,} others"


def _label_log_axis(ax, values: Sequence[float], pad: float = 1.1, axis: str = "y") -> None:
    """Ticks at 1-2-5 steps (decades beyond three decades), and the axis starting at a tick at or
    below its lowest value: matplotlib's own log axis can end with no label near its lowest point."""
    low, high = float(min(values)), float(max(values))
    subs = (1.0,) if high / low > 1e3 else (1.0, 2.0, 5.0)
    steps = [sub * 10.0 ** exponent for exponent in range(int(np.floor(np.log10(low))) - 1,
                                                          int(np.ceil(np.log10(high))) + 2) for sub in subs]
    bottom = max(step for step in steps if step <= low)
    top = min(step for step in steps if step >= high)
    ticks = [step for step in steps if bottom <= step <= top]
    set_ticks, set_lim = (ax.set_yticks, ax.set_ylim) if axis == "y" else (ax.set_xticks, ax.set_xlim)
    set_ticks(ticks, [f"{tick:g}" for tick in ticks])
    set_ticks([], minor=True)
    set_lim(min(bottom, low / pad), max(top, high * pad))


def _metric_value(row: Mapping, mode: str, keys: Sequence[str]) -> float | None:
    """A metric of ``mode`` in one row: long rows carry ``mode``, wide rows ``<mode>/<key>`` or ``<mode>_<key>``."""
    for key in keys:
        if row.get("mode") == mode and row.get(key) is not None:
            return float(row[key])
        for wide_key in (f"{mode}/{key}", f"{mode}_{key}"):
            if row.get(wide_key) is not None:
                return float(row[wide_key])
    return None


def training_curves_figure(rows: Sequence[Mapping],
                           panels: Mapping[str, Sequence[str]] | None = None,
                           modes: Sequence[str] = ("trn", "val"), marked_epoch: int | None = None,
                           marked_label: str = "best.pt") -> Figure:
    """Per-epoch training curves, one panel per metric, one line per mode.

    Args:
        rows: one dict per epoch and mode, ``{"epoch": 3, "mode": "val", "loss/all": 0.2, ...}``,
            or one dict per epoch with prefixed keys, ``{"epoch": 3, "val/loss/all": 0.2, ...}``
            (``val_loss`` works too). Missing or None values are skipped.
        panels: panel title -> metric keys tried in order; default :data:`TRAINING_PANELS`.
            Panels without any value are left out.
        modes: the lines drawn in every panel.
        marked_epoch: an epoch to mark in every panel (best.pt's), labelled ``marked_label``.
            Titles name the highest (lowest, for a loss) validation value, never a "best" epoch:
            the epoch kept as best.pt is chosen by its own rule.
    """
    panels = TRAINING_PANELS if panels is None else panels
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for title, keys in panels.items():
        for mode in modes:
            points = [(float(row.get("epoch", n + 1)), _metric_value(row, mode, keys)) for n, row in enumerate(rows)]
            points = [(epoch, value) for epoch, value in points if value is not None and np.isfinite(value)]
            if points:
                series.setdefault(title, {})[mode] = tuple(map(list, zip(*points)))
    n_cols = 2 if len(series) > 1 else 1
    n_rows = max(1, -(-len(series) // n_cols))
    fig = Figure(figsize=(5.2 * n_cols, 3.6 * n_rows))
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False).ravel())
    for ax, (title, lines) in zip(axes, series.items()):
        extreme = ""
        is_loss = title.lower().startswith("loss")
        for mode, (epochs, values) in lines.items():
            ax.plot(epochs, values, "o-", ms=3, color=MODE_COLORS.get(mode), label=mode)
        if "val" in lines:
            epochs, values = lines["val"]
            pick = int(np.argmin(values) if is_loss else np.argmax(values))
            extreme = f" — {'lowest' if is_loss else 'highest'} val {values[pick]:.3f} (epoch {epochs[pick]:g})"
        if marked_epoch is not None:
            ax.axvline(marked_epoch, color="gray", ls=":", lw=1, label=f"{marked_label} (epoch {marked_epoch})")
        ax.set_title(title + extreme, fontsize=10)
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        epochs_drawn = [e for es, _ in lines.values() for e in es]
        ax.set_xlim(min(epochs_drawn) - 0.5, max(epochs_drawn) + 0.5)  # one epoch: not 0.945 .. 1.05
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        all_values = [v for _, vs in lines.values() for v in vs]
        if is_loss and all(v > 0 for v in all_values):
            ax.set_yscale("log")
            _label_log_axis(ax, all_values)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    if not series:
        _note(axes[0], "no metrics to plot yet")
        axes[0].set_visible(True)
    fig.tight_layout()
    return fig

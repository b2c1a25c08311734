"""The files ``luna evaluate`` leaves: ``metrics.json`` and the FROC, ROC, precision-recall and
probability-histogram PNGs, all written atomically into one folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from luna.atomic import write_text_atomic
from luna.eval.evaluation import Evaluation
from luna.luna16.paths import METRICS_NAME
from luna.report import plots

FIGURE_NAMES = ("froc.png", "roc.png", "precision_recall.png", "probability_histogram.png")


def write_figures(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """FROC, ROC, precision-recall and probability histogram PNGs in ``out_dir``."""
    labels = evaluation.matches.candidate_labels
    probs = evaluation.matches.candidate_probabilities
    threshold = evaluation.classification["threshold"]
    figures = (plots.froc_figure(evaluation.froc), plots.roc_figure(labels, probs),
               plots.precision_recall_figure(labels, probs, threshold),
               plots.probability_histogram_figure(labels, probs, threshold))
    return [plots.save_figure(fig, Path(out_dir) / name) for fig, name in zip(figures, FIGURE_NAMES)]


def write_evaluation(evaluation: Evaluation, out_dir: Path, inputs: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> tuple[Path, list[Path]]:
    """``metrics.json`` (the inputs, every figure and any ``extra`` sections; nan as null) and the PNGs.

    Returns:
        ``(metrics.json path, figure paths)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"inputs": inputs, **evaluation.to_dict(), **(extra or {})}
    metrics_path = write_text_atomic(out_dir / METRICS_NAME, json.dumps(metrics, indent=1, allow_nan=False) + "\n")
    return metrics_path, write_figures(evaluation, out_dir)

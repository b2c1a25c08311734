"""The one-page HTML report of a training run: headline numbers, curves, final figures, the
per-epoch table and the training flags.

The page is a single file (figures are PNGs embedded as base64 data URIs, the CSS is inline,
there is no JavaScript and no external resource), so it can be mailed, archived next to the
checkpoints or opened on a machine without TensorBoard.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
from typing import Any, Sequence

from matplotlib.figure import Figure

from luna.eval.evaluation import Evaluation
from luna.eval.metrics import RECALL_AT_GOAL_KEY
from luna.luna16.paths import SUMMARY_NAME
from luna.report import plots
from luna.report.run_record import RunRecord

# The per-epoch table shows these (header, summary.csv column, format); the rest is folded away.
KEY_COLUMNS = (
    ("epoch", "epoch", "{:.0f}"), ("samples seen", "samples_seen", "{:,.0f}"),
    ("seconds", "seconds", "{:.1f}"), ("samples/s", "train_samples_per_s", "{:.1f}"), ("lr", "lr", "{:.3g}"),
    ("trn loss", "trn_loss/all", "{:.4f}"), ("val loss", "val_loss/all", "{:.4f}"),
    ("val precision", "val_pr/precision", "{:.3f}"), ("val recall", "val_pr/recall", "{:.3f}"),
    ("val F1", "val_pr/f1_score", "{:.3f}"), ("val ROC AUC", "val_auc/roc", "{:.3f}"),
    ("val CPM", "val_froc/cpm", "{:.3f}"),
)
ARGS_COLUMNS = 3
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1180px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
.headline { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 0.8em; }
.card { background: #f4f7fb; border: 1px solid #d7e0ea; border-radius: 8px; padding: 0.7em 1em; }
.card .label { color: #555; font-size: 0.85em; } .card .value { font-size: 1.5em; font-weight: 600; }
.card .detail { color: #666; font-size: 0.8em; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 1em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 1em; margin: 0.5em 0; }
.scroll { overflow-x: auto; }
.args { display: flex; flex-wrap: wrap; gap: 0 1.5em; align-items: flex-start; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; white-space: normal; }
tr.best td { background: #e8f5e9; font-weight: 600; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


# --- HTML pieces ---------------------------------------------------------------------------------

def figure_uri(fig: Figure) -> str:
    """A figure as a ``data:image/png;base64,...`` URI, at the DPI of :mod:`luna.plots`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=plots.DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    return f'<img src="{figure_uri(fig)}" alt="{html.escape(alt)}">'


def _float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fmt(value: Any, spec: str = "{:.3f}") -> str:
    number = _float(value)
    if number is None:
        # Blank cells and undefined figures (nan) show as a dash; anything else as written.
        return "—" if value in (None, "") or str(value).lower() == "nan" else str(value)
    return spec.format(number)


def _card(label: str, value: str, detail: str = "") -> str:
    return (f'<div class="card"><div class="label">{html.escape(label)}</div>'
            f'<div class="value">{html.escape(value)}</div><div class="detail">{html.escape(detail)}</div></div>')


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 0,
           row_classes: Sequence[str] | None = None) -> str:
    """A table of escaped cells; the first ``text_columns`` are left-aligned text."""
    def cls(n: int) -> str:
        return ' class="text"' if n < text_columns else ""

    head = "".join(f"<th{cls(n)}>{html.escape(h)}</th>" for n, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        tr = f'<tr class="{row_classes[r]}">' if row_classes and row_classes[r] else "<tr>"
        body.append(tr + "".join(f"<td{cls(n)}>{html.escape(c)}</td>" for n, c in enumerate(row)) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _headline(run: RunRecord, evaluation: Evaluation | None, threshold: float) -> str:
    cards = []
    if run.best and run.best["metric_name"] == "epoch":
        cards.append(_card("best.pt", f"epoch {run.best['epoch']}", "the final weights (--best-metric epoch)"))
    elif run.best:
        cards.append(_card("best epoch", f"{run.best['epoch']}",
                           f"val {run.best['metric_name']} = {_fmt(run.best['metric_value'], '{:.4f}')} (best.pt)"))
    last = run.rows[-1] if run.rows else {}
    if evaluation is not None:
        froc, cls = evaluation.froc, evaluation.classification
        ci = froc.ci
        cards += [
            _card("final validation CPM", _fmt(froc.cpm),
                  f"{ci.level:.0%} interval [{ci.cpm[0]:.3f}, {ci.cpm[1]:.3f}], {ci.n_bootstraps:,} bootstraps"
                  if ci else "no bootstrap interval (--bootstraps 0)"),
            _card("ROC AUC", _fmt(cls["auc/roc"]),
                  f"{cls['neg_count'] + cls['pos_count']:,} candidates, {cls['pos_count']:,} hit a nodule"),
            _card(f"recall / precision at {threshold:g}", f"{_fmt(cls['pr/recall'])} / {_fmt(cls['pr/precision'])}",
                  f"F1 {_fmt(cls['pr/f1_score'])}; best recall at precision >= {cls['min_precision']:g}: "
                  f"{_fmt(cls[RECALL_AT_GOAL_KEY])}"),
        ]
    elif last:
        # No predictions to score: the last epoch's own figures, without an interval.
        cards += [
            _card("final validation CPM", _fmt(last.get("val_froc/cpm")), "from summary.csv, no interval"),
            _card("ROC AUC", _fmt(last.get("val_auc/roc")), "from summary.csv"),
            _card(f"recall / precision at {threshold:g}",
                  f"{_fmt(last.get('val_pr/recall'))} / {_fmt(last.get('val_pr/precision'))}", "from summary.csv"),
        ]
    if last:
        total = sum(_float(row.get("seconds")) or 0.0 for row in run.rows)
        cards.append(_card("epochs", f"{len(run.rows)}",
                           f"{_fmt(last.get('samples_seen'), '{:,.0f}')} samples seen, {total / 60:.1f} min"))
    return f'<div class="headline">{"".join(cards)}</div>' if cards else ""


def _curves_section(run: RunRecord) -> str:
    if not run.rows:
        return ""
    # summary.csv holds text, and an empty cell where a metric was not computed that epoch.
    rows = [{key: number for key, value in row.items() if (number := _float(value)) is not None}
            for row in run.rows]
    return "<h2>Training curves</h2>" + _img(plots.training_curves_figure(rows), "per-epoch training curves")


def _final_section(evaluation: Evaluation) -> str:
    froc, labels = evaluation.froc, evaluation.matches.candidate_labels
    probs, threshold = evaluation.matches.candidate_probabilities, evaluation.classification["threshold"]
    figures = []
    if froc.n_nodules:
        figures.append(_img(plots.froc_figure(froc), "FROC curve with bootstrap band"))
    figures += [_img(plots.roc_figure(labels, probs), "ROC curve"),
                _img(plots.precision_recall_figure(labels, probs, threshold), "precision-recall curve"),
                _img(plots.probability_histogram_figure(labels, probs, threshold), "probability histograms")]
    ci = froc.ci
    rows = [["CPM", _fmt(froc.cpm), f"[{ci.cpm[0]:.3f}, {ci.cpm[1]:.3f}]" if ci else "—"]]
    for rate, sens in froc.sensitivity_at.items():
        interval = ci.sensitivity_at[rate] if ci else None
        rows.append([f"sensitivity at {rate:g} FP/scan", _fmt(sens),
                     f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "—"])
    counts = (f"{froc.n_scans:,} validation scans, {froc.n_nodules:,} nodules ({froc.n_found:,} hit in the top "
              f"100 per scan), {froc.n_candidates:,} candidates, {evaluation.matches.n_excluded:,} excluded.")
    note = ("" if froc.n_nodules else
            '<p class="note">No annotated nodule in the validation scans: CPM is undefined.</p>')
    return ("<h2>Final validation (last epoch, LUNA16 rules)</h2>"
            f"<p>{html.escape(counts)}</p>{note}"
            + _table(["", "value", f"{ci.level:.0%} interval" if ci else "interval"], rows, text_columns=1)
            + f'<div class="figures">{"".join(figures)}</div>')


def _detection_section(detection: Evaluation, classification: Evaluation | None) -> str:
    """The detection track (``luna detect``'s findings on the held-out scans) beside the classification
    track (the given candidates), both by the LUNA16 rules."""
    tracks = [("detection (luna detect)", detection.froc)]
    if classification is not None:
        tracks.append(("classification (given candidates)", classification.froc))
    rows = [["CPM"] + [_fmt(froc.cpm) + (f" [{froc.ci.cpm[0]:.3f}, {froc.ci.cpm[1]:.3f}]" if froc.ci else "")
                       for _, froc in tracks]]
    for rate in detection.froc.sensitivity_at:
        rows.append([f"sensitivity at {rate:g} FP/scan"] + [_fmt(froc.sensitivity_at.get(rate)) for _, froc in tracks])
    rows.append(["nodules hit in the top 100 per scan"] + [f"{froc.n_found} of {froc.n_nodules}" for _, froc in tracks])
    rows.append(["candidates per scan"] + [f"{froc.n_candidates / max(froc.n_scans, 1):.1f}" for _, froc in tracks])
    froc = detection.froc
    counts = (f"{froc.n_scans:,} scans, {froc.n_nodules:,} nodules, {froc.n_candidates:,} findings "
              f"({detection.matches.n_excluded:,} on excluded findings); intervals: 95% bootstrap over scans.")
    return ("<h2>Detection track (LUNA16 rules)</h2>"
            f"<p>{html.escape(counts)}</p>"
            + _table([""] + [name for name, _ in tracks], rows, text_columns=1)
            + f'<div class="figures">{_img(plots.froc_figure(froc), "FROC of the detection track")}</div>')


def _summary_section(run: RunRecord) -> str:
    if not run.rows:
        return ""
    best_epoch = str(run.best["epoch"]) if run.best else None
    columns = [c for c in KEY_COLUMNS if any(row.get(c[1]) not in (None, "") for row in run.rows)]
    rows = [[_fmt(row.get(key), spec) for _, key, spec in columns] for row in run.rows]
    marks = ["best" if row.get("epoch") == best_epoch else "" for row in run.rows]
    all_keys = list(dict.fromkeys(key for row in run.rows for key in row))
    full = _table(all_keys, [[row.get(key, "") for key in all_keys] for row in run.rows], row_classes=marks)
    return ("<h2>Per-epoch summary</h2>"
            + _table([c[0] for c in columns], rows, row_classes=marks)
            + f"<details><summary>all {len(all_keys)} columns of {SUMMARY_NAME}</summary>{full}</details>")


def _args_section(run: RunRecord) -> str:
    if not run.args:
        return ""
    rows = [[key, json.dumps(value) if isinstance(value, (list, dict)) else str(value)]
            for key, value in run.args.items()]
    # Forty short rows read better side by side than as one long narrow column.
    per_column = -(-len(rows) // ARGS_COLUMNS)
    tables = [_table(["flag", "value"], rows[start:start + per_column], text_columns=2)
              for start in range(0, len(rows), per_column)]
    return f'<h2>Training arguments</h2><div class="args">{"".join(tables)}</div>'


def render_report(run: RunRecord, evaluation: Evaluation | None, threshold: float = 0.5,
                  detection: Evaluation | None = None) -> str:
    """The whole HTML page of a run.

    Args:
        run: from :func:`read_run` (its notes are shown at the top).
        evaluation: the scored validation predictions, or None.
        threshold: the probability above which a candidate is called a nodule.
        detection: the scored findings of ``luna detect`` on the held-out scans, or None.

    Returns:
        One HTML document; every piece of text in it is escaped.
    """
    title = f"luna run {run.run_name}" + (f" — {run.comment}" if run.comment else "")
    generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in run.notes)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">{html.escape(str(run.run_dir))} · report written {generated}</p>',
        notes, _headline(run, evaluation, threshold), _curves_section(run),
        _final_section(evaluation) if evaluation is not None else "",
        _detection_section(detection, evaluation) if detection is not None else "",
        _summary_section(run), _args_section(run), "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"

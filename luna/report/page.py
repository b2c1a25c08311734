"""The one-page HTML report of a training run: headline numbers, curves, final figures, the
per-epoch table and the training flags.

Each figure has one source and says which: luna evaluate's final evaluation (RUN/eval/) when
there is one, else the training's last validation (val_predictions.csv, suppressed); the curves
and the per-epoch table are the training's own validation (summary.csv, no suppression).

The page is a single file (figures are PNGs embedded as base64 data URIs, the CSS is inline,
there is no JavaScript and no external resource), so it can be mailed, archived next to the
checkpoints or opened on a machine without TensorBoard.
"""
from __future__ import annotations

import base64
import datetime
import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from luna.eval.evaluation import Evaluation
from luna.eval.froc import FrocResult
from luna.eval.metrics import GOAL_PRECISION, RECALL_AT_GOAL_KEY
from luna.eval.suppression import NMS_RADIUS_MM
from luna.luna16.paths import BEST_NAME, SUMMARY_NAME, VAL_PREDICTIONS_NAME
from luna.luna16.rules import MAX_MARKS_PER_SCAN
from luna.models.views import DEFAULT_VIEW_COUNT
from luna.report import plots
from luna.report.run_record import FinalEvaluation, RunRecord

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
    return png_uri(plots.png_bytes(fig))


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


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


# What the page says each source is: every figure carries one of these.
OWN_VALIDATION = ("the training's own validation (one view per candidate): loss, precision, recall, F1 and "
                  "ROC AUC over every validation candidate without suppression; CPM after suppression within "
                  f"{NMS_RADIUS_MM:g} mm, as in {VAL_PREDICTIONS_NAME}")


def _names(paths: Sequence[str]) -> str:
    return " + ".join(Path(p).name for p in paths) or "(predictions not recorded)"


def _last_epoch(run: RunRecord) -> str:
    return str(run.rows[-1].get("epoch", "?")) if run.rows else "?"


def _score_cards(froc: FrocResult, cls: dict[str, Any], cpm_label: str, source: str) -> list[str]:
    """CPM, ROC AUC and recall / precision of one scored file, each saying which file it is."""
    ci = froc.ci
    interval = (f"{ci.level:.0%} interval [{ci.cpm[0]:.3f}, {ci.cpm[1]:.3f}], {ci.n_bootstraps:,} bootstraps"
                if ci else "no bootstrap interval (--bootstraps 0)")
    n_candidates, n_pos = _candidate_counts(cls)
    threshold = cls.get("threshold", 0.5)
    return [
        _card(cpm_label, _fmt(froc.cpm), f"{interval}; {source}: {froc.n_scans:,} scans, {froc.n_nodules:,} nodules"),
        _card("ROC AUC per candidate", _fmt(cls.get("auc/roc")),
              f"{source}: {n_candidates:,} candidates, {n_pos:,} on a nodule"),
        _card(f"recall / precision at {threshold:g}", f"{_fmt(cls.get('pr/recall'))} / {_fmt(cls.get('pr/precision'))}",
              f"{source}, per candidate; F1 {_fmt(cls.get('pr/f1_score'))}; best recall at precision >= "
              f"{cls.get('min_precision', GOAL_PRECISION):g}: {_fmt(cls.get(RECALL_AT_GOAL_KEY))}"),
    ]


def _candidate_counts(cls: dict[str, Any]) -> tuple[int, int]:
    """(candidates in the per-candidate figures, those on a nodule)."""
    n_pos, n_neg = int(cls.get("pos_count") or 0), int(cls.get("neg_count") or 0)
    return n_pos + n_neg, n_pos


def _headline(run: RunRecord, evaluation: Evaluation | None, final: FinalEvaluation | None) -> str:
    cards = []
    if run.best and run.best["metric_name"] == "epoch":
        cards.append(_card("best.pt", f"epoch {run.best['epoch']}", "the final weights (--best-metric epoch)"))
    elif run.best:
        cards.append(_card("best.pt", f"epoch {run.best['epoch']}",
                           f"val {run.best['metric_name']} = {_fmt(run.best['metric_value'], '{:.4f}')}"))
    last = run.rows[-1] if run.rows else {}
    if final is not None:
        cards += _score_cards(final.froc, final.classification, "final evaluation CPM",
                              f"luna evaluate of {_names(final.predictions)}")
    elif evaluation is not None:
        cards += _score_cards(evaluation.froc, evaluation.classification, "last validation CPM",
                              f"{VAL_PREDICTIONS_NAME} of epoch {_last_epoch(run)} (one view, suppressed)")
    elif last:
        # Nothing scored: the last epoch's own figures, without an interval.
        source = f"summary.csv, epoch {_last_epoch(run)}: the training's own validation"
        cards += [
            _card("last validation CPM", _fmt(last.get("val_froc/cpm")), f"{source}, no interval"),
            _card("ROC AUC per candidate", _fmt(last.get("val_auc/roc")), f"{source} (no suppression)"),
            _card("recall / precision", f"{_fmt(last.get('val_pr/recall'))} / {_fmt(last.get('val_pr/precision'))}",
                  f"{source} (no suppression)"),
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
    best_epoch = int(run.best["epoch"]) if run.best and isinstance(run.best.get("epoch"), int) else None
    figure = plots.training_curves_figure(rows, marked_epoch=best_epoch)
    return ("<h2>Training curves</h2>"
            f"<p>Per epoch: training batches (trn) and {html.escape(OWN_VALIDATION)} (val).</p>"
            + _img(figure, "per-epoch training curves"))


def _froc_table(froc: FrocResult) -> str:
    ci = froc.ci
    rows = [["CPM", _fmt(froc.cpm), f"[{ci.cpm[0]:.3f}, {ci.cpm[1]:.3f}]" if ci else "—"]]
    for rate, sens in froc.sensitivity_at.items():
        interval = ci.sensitivity_at.get(rate) if ci else None
        rows.append([f"sensitivity at {rate:g} FP/scan", _fmt(sens),
                     f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "—"])
    return _table(["", "value", f"{ci.level:.0%} interval" if ci else "interval"], rows, text_columns=1)


def _counts(froc: FrocResult, cls: dict[str, Any]) -> str:
    """The counts behind every figure of one scored file, so that they add up on the page."""
    n_candidates, n_pos = _candidate_counts(cls)
    left_out = froc.n_candidates - n_candidates
    return (f"FROC: {froc.n_scans:,} scans with {froc.n_nodules:,} nodules ({froc.n_found:,} hit among the "
            f"{MAX_MARKS_PER_SCAN} highest-scored candidates of their scan), {froc.n_candidates:,} candidates. "
            f"Per candidate (ROC, precision-recall, histogram): {n_candidates:,} candidates, {n_pos:,} of them "
            "on a nodule (several candidates can hit one nodule)"
            + (f"; the {left_out:,} on an excluded finding only are left out." if left_out > 0 else "."))


def _final_evaluation_section(final: FinalEvaluation) -> str:
    views = (f"luna predict's scores (unless told otherwise, the mean over {DEFAULT_VIEW_COUNT} views of each "
             f"candidate, with twins within {NMS_RADIUS_MM:g} mm suppressed)")
    text = (f"From {final.metrics_path}: luna evaluate of {', '.join(final.predictions) or 'a results file'}, "
            f"{views}. {_counts(final.froc, final.classification)}")
    figures = [f'<img src="{png_uri(path.read_bytes())}" alt="{html.escape(path.name)}">' for path in final.figures]
    return (f"<h2>Final evaluation: {html.escape(_names(final.predictions))} (LUNA16 rules)</h2>"
            f"<p>{html.escape(text)}</p>" + _froc_table(final.froc) + f'<div class="figures">{"".join(figures)}</div>')


def _final_section(run: RunRecord, evaluation: Evaluation) -> str:
    froc, labels = evaluation.froc, evaluation.matches.candidate_labels
    probs, threshold = evaluation.matches.candidate_probabilities, evaluation.classification["threshold"]
    figures = []
    if froc.n_nodules:
        figures.append(_img(plots.froc_figure(froc), "FROC curve with bootstrap band"))
    figures += [_img(plots.roc_figure(labels, probs), "ROC curve"),
                _img(plots.precision_recall_figure(labels, probs, threshold), "precision-recall curve"),
                _img(plots.probability_histogram_figure(labels, probs, threshold, suppression_mm=NMS_RADIUS_MM),
                     "probability histograms")]
    epoch = _last_epoch(run)
    text = (f"The scores of the training's last validation (epoch {epoch}) in {VAL_PREDICTIONS_NAME}: one view per "
            f"candidate, twins within {NMS_RADIUS_MM:g} mm suppressed (a candidate near a higher-scoring one keeps "
            "0.1 of its score); so its CPM is that epoch's val CPM, and its per-candidate figures are not the "
            f"table's, which have no suppression. {_counts(froc, evaluation.classification)}")
    note = ("" if froc.n_nodules else
            '<p class="note">No annotated nodule in the validation scans: CPM is undefined.</p>')
    return (f"<h2>Last validation: {VAL_PREDICTIONS_NAME}, epoch {html.escape(epoch)} (LUNA16 rules)</h2>"
            f"<p>{html.escape(text)}</p>{note}" + _froc_table(froc) + f'<div class="figures">{"".join(figures)}</div>')


def _detection_section(detection: Evaluation, classification: FrocResult | None) -> str:
    """The detection track (``luna detect``'s findings on the held-out scans) beside the classification
    track (the given candidates: the final evaluation when there is one, else the last validation),
    both by the LUNA16 rules."""
    tracks = [("detection (luna detect)", detection.froc)]
    if classification is not None:
        tracks.append(("classification (given candidates)", classification))
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
    marked = f" Highlighted: epoch {best_epoch}, the one in {BEST_NAME}." if best_epoch in [r.get("epoch") for r in run.rows] \
        else ""
    return ("<h2>Per-epoch summary</h2>"
            f"<p>The val columns are {html.escape(OWN_VALIDATION)}.{html.escape(marked)}</p>"
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


def render_report(run: RunRecord, evaluation: Evaluation | None, final: FinalEvaluation | None = None,
                  detection: Evaluation | None = None) -> str:
    """The whole HTML page of a run.

    Args:
        run: from :func:`read_run` (its notes are shown at the top).
        evaluation: the run's scored val_predictions.csv, or None.
        final: luna evaluate's figures from the run's eval/ folder, or None. When given, they are
            the headline and the final section (and ``evaluation`` is not shown).
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
        notes, _headline(run, evaluation, final), _curves_section(run),
        _final_evaluation_section(final) if final is not None else
        _final_section(run, evaluation) if evaluation is not None else "",
        _detection_section(detection, final.froc if final is not None else
                           evaluation.froc if evaluation is not None else None) if detection is not None else "",
        _summary_section(run), _args_section(run), "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"

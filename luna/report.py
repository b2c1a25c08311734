"""``luna report RUN_DIR``: one self-contained HTML page per training run.

    luna report runs/luna/2024-05-01_10.00.00-luna [--out FILE] [--annotations A.csv]
        [--excluded E.csv] [--bootstraps 200]

The page is a single file (figures are PNGs embedded as base64 data URIs, the CSS is inline,
there is no JavaScript and no external resource), so it can be mailed, archived next to the
checkpoints or opened on a machine without TensorBoard. It shows the headline numbers, the
per-epoch curves from ``summary.csv``, the final FROC / ROC / precision-recall / probability
figures scored from ``val_predictions.csv``, the per-epoch table and the training flags.

Whatever is missing (no predictions, no annotations, no checkpoint) leaves its section out with a
note on the page instead of failing: a report of a half-finished run is still worth reading.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import html
import io
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from luna import plots
from luna.app import HelpFormatter, add_common_args, non_negative_int, run_app
from luna.atomic import write_text_atomic
from luna.candidates import ANNOTATION_FILE_NAMES, EXCLUDED_FILE_NAMES, find_csv
from luna.checkpoint import BEST_NAME, LAST_NAME, load_checkpoint
from luna.errors import DataError
from luna.evaluate import Evaluation, evaluate
from luna.luna16_files import read_annotations, read_predictions
from luna.runlog import SUMMARY_NAME, read_summary

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
RUN_META_NAME = "run.json"
PREDICTIONS_NAME = "val_predictions.csv"
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


@dataclass
class RunRecord:
    """What a run directory holds, read once; ``notes`` collects what is missing."""

    run_dir: Path
    run_name: str
    comment: str
    rows: list[dict[str, str]]  # summary.csv, one dict per epoch, values as written
    args: dict[str, Any] | None  # training flags, from the newest readable checkpoint
    best: dict[str, Any] | None  # best.pt's epoch, metric_name and metric_value
    notes: list[str] = field(default_factory=list)


def _read_checkpoint(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """A checkpoint's dict, or None with a note: a broken file must not cost the whole report."""
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path)
    except DataError as exc:
        notes.append(str(exc))
        return None


def read_run(run_dir: Path) -> RunRecord:
    """Collect the pieces of a run directory written by ``luna train``.

    Args:
        run_dir: the run directory (holding summary.csv and/or run.json).

    Returns:
        The run's record; absent optional pieces are None, with a note.

    Raises:
        DataError: ``run_dir`` is not a run directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir}: no such directory")
    if not (run_dir / SUMMARY_NAME).is_file() and not (run_dir / RUN_META_NAME).is_file():
        raise DataError(f"{run_dir}: not a luna run directory (no {SUMMARY_NAME} and no {RUN_META_NAME})")
    notes: list[str] = []
    meta: dict[str, Any] = {}
    try:
        meta = json.loads((run_dir / RUN_META_NAME).read_text())
    except FileNotFoundError:
        notes.append(f"no {RUN_META_NAME}: the run is named after its directory")
    except (OSError, ValueError) as exc:
        notes.append(f"{run_dir / RUN_META_NAME} is unreadable ({exc}): the run is named after its directory")
    rows = read_summary(run_dir / SUMMARY_NAME)
    if not rows:
        notes.append(f"no epoch has finished yet ({SUMMARY_NAME} is missing or empty)")
    # last.pt holds the newest flags (a resumed run may have raised --epochs); best.pt is a fallback.
    last = _read_checkpoint(run_dir / LAST_NAME, notes)
    best = _read_checkpoint(run_dir / BEST_NAME, notes)
    ckpt = last or best
    if ckpt is None:
        notes.append(f"no readable checkpoint ({LAST_NAME} / {BEST_NAME}): the training arguments are unknown")
    return RunRecord(
        run_dir=run_dir, run_name=str(meta.get("run_name") or run_dir.name), comment=str(meta.get("comment") or ""),
        rows=rows, args=dict(ckpt.get("args") or {}) if ckpt else None,
        best=None if best is None else {key: best.get(key) for key in ("epoch", "metric_name", "metric_value")},
        notes=notes)


def _findings_path(flag: Path | None, run: RunRecord, key: str, names: Sequence[str], what: str) -> Path | None:
    """The flag, else the training flag of the same name, else a file in the training data dir."""
    if flag is not None:
        return flag  # given by the user: a missing file is an error, raised when it is read
    args = run.args or {}
    if args.get(key):
        path = Path(args[key])
        if path.is_file():
            return path
        run.notes.append(f"the {what} used in training, {path}, is not there any more")
    if args.get("data_dir"):
        try:
            return find_csv(Path(args["data_dir"]), names, what)
        except DataError:
            pass
    return None


def score_predictions(run: RunRecord, annotations: Path | None, excluded: Path | None,
                      n_bootstraps: int, threshold: float) -> Evaluation | None:
    """Score the run's last validation predictions by the LUNA16 rules; None (with a note) if impossible.

    Only the scans in the predictions are evaluated: they are the validation scans, as in
    training, so the CPM matches the summary's last ``val_froc/cpm``.
    """
    path = run.run_dir / PREDICTIONS_NAME
    if not path.is_file():
        run.notes.append(f"no {PREDICTIONS_NAME} in the run directory: final FROC, ROC and "
                         "precision-recall figures are left out")
        return None
    annotations = _findings_path(annotations, run, "annotations", ANNOTATION_FILE_NAMES, "annotations")
    if annotations is None:
        run.notes.append("no annotations CSV found (give one with --annotations): final figures are left out")
        return None
    excluded = _findings_path(excluded, run, "excluded", EXCLUDED_FILE_NAMES, "excluded annotations")
    nodules = read_annotations(annotations)
    excluded_findings = read_annotations(excluded, "excluded findings") if excluded else None
    try:
        predictions = read_predictions(path)
    except DataError as exc:
        run.notes.append(f"final figures are left out: {exc}")
        return None
    series_list = sorted(set(predictions.series_uids.tolist()))
    log.info("Scoring %s against %s (%d scans, %d bootstraps)", path, annotations, len(series_list), n_bootstraps)
    return evaluate(predictions, nodules, excluded_findings, series_list, threshold=threshold,
                    n_bootstraps=n_bootstraps)


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
            _card("ROC AUC", _fmt(cls["roc_auc"]),
                  f"{cls['n_candidates']:,} candidates, {cls['n_positive']:,} hit a nodule"),
            _card(f"recall / precision at {threshold:g}", f"{_fmt(cls['recall'])} / {_fmt(cls['precision'])}",
                  f"F1 {_fmt(cls['f1'])}; best recall at precision >= {cls['min_precision']:g}: "
                  f"{_fmt(cls['recall_at_precision'])}"),
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


def render_report(run: RunRecord, evaluation: Evaluation | None, threshold: float = 0.5) -> str:
    """The whole HTML page of a run.

    Args:
        run: from :func:`read_run` (its notes are shown at the top).
        evaluation: the scored validation predictions, or None.
        threshold: the probability above which a candidate is called a nodule.

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
        _summary_section(run), _args_section(run), "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luna report", description="Write one self-contained HTML page (embedded figures, no JavaScript) "
        "for a training run: headline numbers, curves, final FROC/ROC/PR figures, per-epoch table, arguments.",
        formatter_class=HelpFormatter)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="run directory written by luna train (holds summary.csv, run.json, last.pt)")
    parser.add_argument("--out", type=Path, default=None, help=f"HTML file to write (default: RUN_DIR/{REPORT_NAME})")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="nodules CSV for the final figures (default: the training run's, else found "
                             "in its data dir)")
    parser.add_argument("--excluded", type=Path, default=None,
                        help="annotations_excluded.csv (default: the training run's, else found in its "
                             "data dir, if any)")
    parser.add_argument("--bootstraps", type=non_negative_int, default=200,
                        help="bootstrap resamples of the scans for the CPM interval (0: none)")
    return add_common_args(parser)


class LunaReportApp:
    """Write the HTML report of one training run; see the module docstring."""

    def __init__(self, argv: Sequence[str] | None = None):
        self.args = get_args_parser().parse_args(argv)
        if self.args.out is None:
            self.args.out = self.args.run_dir / REPORT_NAME

    def main(self) -> Path:
        args = self.args
        log.info("Starting %s, %s", type(self).__name__, args)
        run = read_run(args.run_dir)
        threshold = _float((run.args or {}).get("threshold"))
        threshold = 0.5 if threshold is None else threshold
        evaluation = score_predictions(run, args.annotations, args.excluded, args.bootstraps, threshold)
        for note in run.notes:
            log.warning("%s", note)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        path = write_text_atomic(args.out, render_report(run, evaluation, threshold))
        log.info("Wrote report %s", path)
        return path


if __name__ == "__main__":
    sys.exit(run_app(LunaReportApp, prog="luna report"))

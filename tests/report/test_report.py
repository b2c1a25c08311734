"""`luna report`: one self-contained HTML page from a real (tiny) training run."""
import base64
import csv
import html
import json
import re
import shutil
from pathlib import Path

import pytest

from luna.cli.common import run_app
from luna.cli.evaluate import LunaEvaluateApp
from luna.runtime.checkpoint import load_checkpoint
from luna.cli.report import LunaReportApp
from luna.cli.train import LunaTrainingApp
from tests.conftest import make_tiny_luna

IMG_RE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 2-epoch run of `luna train` (written once for the whole module)."""
    root = tmp_path_factory.mktemp("report")
    data = make_tiny_luna(root / "luna", n_series=4, negatives_per_scan=6)
    LunaTrainingApp(["--data-dir", str(data["root"]), "--cache-dir", str(root / "cache"),
                     "--runs-dir", str(root / "runs"), "--val-stride", "2", "--batch-size", "8",
                     "--num-workers", "0", "--epoch-size", "24", "--precision", "fp32",
                     "--epochs", "2"]).main()
    (run,) = [p for p in (root / "runs" / "luna").iterdir() if (p / "run.json").exists()]
    return run


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    """A copy of the run that a test may damage."""
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def _summary(run: Path) -> list[dict]:
    with open(run / "summary.csv") as handle:
        return list(csv.DictReader(handle))


def _report(run: Path, *extra: str) -> str:
    path = LunaReportApp([str(run), "--bootstraps", "50", *extra]).main()
    return path.read_text(encoding="utf-8")


def test_report_is_one_self_contained_page(run_copy, caplog):
    with caplog.at_level("INFO"):
        page = _report(run_copy)
    out = run_copy / "report.html"
    assert f"Wrote report {out}" in caplog.text
    assert page.startswith("<!DOCTYPE html>") and page.count("<html") == 1 and page.rstrip().endswith("</html>")
    images = IMG_RE.findall(page)
    assert len(images) >= 5  # curves, FROC, ROC, precision-recall, histogram
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    # Nothing is fetched from anywhere, and nothing runs.
    assert 'src="http' not in page and "<script" not in page.lower() and "<link" not in page.lower()
    assert len(re.findall(r'src="', page)) == len(images)
    meta = json.loads((run_copy / "run.json").read_text())
    assert f"<title>luna run {meta['run_name']} — {meta['comment']}</title>" in page
    # The headline CPM of the re-scored predictions is the one training logged for its last epoch.
    last = _summary(run_copy)[-1]
    cpm = f"{float(last['val_froc/cpm']):.3f}"
    assert re.search(r"last validation CPM</div><div class=\"value\">" + re.escape(cpm) + "</div>", page)
    assert "bootstraps" in page and "95% interval [" in page
    assert "epoch 2</div>" in page and "the final weights (--best-metric epoch)" in page  # best.pt's card
    # The per-epoch table has both epochs, the arguments table the training flags.
    assert "<td>1</td>" in page and "<td>2</td>" in page
    assert "<td class=\"text\">val_stride</td><td class=\"text\">2</td>" in page
    assert "<td class=\"text\">epoch_size</td><td class=\"text\">24</td>" in page
    assert not [p.name for p in run_copy.iterdir() if p.name.startswith(".")]  # no temp file left


def test_text_from_the_run_is_escaped(run_copy):
    meta = json.loads((run_copy / "run.json").read_text())
    meta["comment"] = '<script>alert("x")</script>&'
    (run_copy / "run.json").write_text(json.dumps(meta))
    page = _report(run_copy, "--bootstraps", "0")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    assert "no bootstrap interval" in page


def test_without_predictions_the_curves_and_tables_remain(run_copy, tmp_path):
    (run_copy / "val_predictions.csv").unlink()
    out = tmp_path / "elsewhere" / "page.html"
    page = _report(run_copy, "--out", str(out))
    assert out.is_file() and not (run_copy / "report.html").exists()
    assert len(IMG_RE.findall(page)) == 1  # the training curves only
    assert "no val_predictions.csv" in page and "Per-epoch summary" in page
    last = _summary(run_copy)[-1]
    assert f"{float(last['val_froc/cpm']):.3f}" in page and "summary.csv, epoch 2: the training&#x27;s own" in page


def _card(page: str, label: str) -> tuple[str, str]:
    """(value, detail) of the headline card called ``label``."""
    match = re.search(re.escape(label) + r'</div><div class="value">([^<]*)</div><div class="detail">([^<]*)</div>',
                      page)
    assert match, label
    return match.group(1), html.unescape(match.group(2))


def test_every_figure_says_what_it_is_and_the_counts_agree(run_copy):
    page = _report(run_copy)
    text = html.unescape(page)
    # The headline and the final section are both val_predictions.csv of the last epoch, suppressed.
    _, detail = _card(page, "ROC AUC per candidate")
    assert detail.startswith("val_predictions.csv of epoch 2 (one view, suppressed): ")
    n_candidates, n_pos = re.search(r"(\d+) candidates, (\d+) on a nodule", detail).groups()
    assert f"Per candidate (ROC, precision-recall, histogram): {n_candidates} candidates, {n_pos} of them " \
           "on a nodule" in text
    assert "Last validation: val_predictions.csv, epoch 2" in text and "twins within 10 mm suppressed" in text
    # The table and the curves are the training's own figures, and say so.
    assert text.count("the training's own validation (one view per candidate)") == 2
    assert "Highlighted: epoch 2, the one in best.pt." in text


def test_the_final_evaluation_is_the_headline_when_the_run_has_one(run_copy, capsys):
    # What the demo does after training: luna predict, then luna evaluate into RUN/eval.
    predictions = run_copy / "predictions_val.csv"
    shutil.copy(run_copy / "val_predictions.csv", predictions)
    args = load_checkpoint(run_copy / "last.pt")["args"]
    assert run_app(LunaEvaluateApp, ["--predictions", str(predictions), "--annotations",
                                     str(Path(args["data_dir"]) / "annotations.csv"), "--bootstraps", "20",
                                     "--out-dir", str(run_copy / "eval")]) == 0
    capsys.readouterr()
    metrics = json.loads((run_copy / "eval" / "metrics.json").read_text())
    page = _report(run_copy)
    value, detail = _card(page, "final evaluation CPM")
    low, high = metrics["froc"]["cpm_ci"]
    assert value == f"{metrics['froc']['cpm']:.3f}" and f"[{low:.3f}, {high:.3f}], 20 bootstraps" in detail
    assert "luna evaluate of predictions_val.csv" in detail
    assert _card(page, "ROC AUC per candidate")[0] == f"{metrics['classification']['auc/roc']:.3f}"
    text = html.unescape(page)
    assert f"From {run_copy / 'eval' / 'metrics.json'}: luna evaluate of {predictions}" in text
    assert "Last validation:" not in text and "last validation CPM" not in text  # one source
    images = IMG_RE.findall(page)
    assert len(images) == 1 + 4  # the curves, and luna evaluate's own four PNGs
    written = {base64.b64encode((run_copy / "eval" / name).read_bytes()).decode() for name in
               ("froc.png", "roc.png", "precision_recall.png", "probability_histogram.png")}
    assert written <= set(images)


def _error_lines(capsys) -> list[str]:
    """stderr without the log records that run_app's logging also sends there."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("luna report:")]


def test_annotations_flag_overrides_and_a_missing_one_is_an_error(run_copy, tmp_path, capsys):
    empty = tmp_path / "no_nodules.csv"
    empty.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    page = _report(run_copy, "--annotations", str(empty))
    assert "No annotated nodule in the validation scans" in page
    assert len(IMG_RE.findall(page)) == 4  # no FROC without nodules; curves, ROC, PR, histogram remain
    assert run_app(LunaReportApp, [str(run_copy), "--annotations", str(tmp_path / "nope.csv")],
                   prog="luna report") == 1
    assert _error_lines(capsys) == [f"luna report: error: annotations file {tmp_path / 'nope.csv'} does not exist"]


def test_an_out_under_a_file_is_one_line(run_copy, tmp_path, capsys):
    blocker = tmp_path / "pages"
    blocker.write_text("a file")
    assert run_app(LunaReportApp, [str(run_copy), "--bootstraps", "0", "--out", str(blocker / "r.html")],
                   prog="luna report") == 1
    assert _error_lines(capsys) == [f"luna report: error: {blocker}: is a file where a folder is expected"]


def test_a_directory_that_is_not_a_run_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "junk.txt").write_text("hello")
    assert run_app(LunaReportApp, [str(tmp_path)], prog="luna report") == 1
    assert _error_lines(capsys) == [
        f"luna report: error: {tmp_path}: not a luna run directory (no summary.csv and no run.json)"]
    assert not (tmp_path / "report.html").exists()


def test_a_run_without_checkpoints_or_epochs_still_reports(tmp_path):
    # What a run killed during its first epoch leaves: only run.json.
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"tb_dir": "x", "run_name": "2024-01-01_00.00.00",
                                              "comment": "early"}))
    page = _report(run)
    assert "luna run 2024-01-01_00.00.00 — early" in page
    assert "no epoch has finished yet" in page and "training arguments are unknown" in page


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        LunaReportApp(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("RUN_DIR", "--out", "--annotations", "--excluded", "--bootstraps", "(default: 200)"):
        assert flag in out, flag

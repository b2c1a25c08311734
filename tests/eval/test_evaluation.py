"""``luna evaluate`` end to end on small CSVs, its JSON form, and its one-line errors."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from luna.cli.common import run_app
from luna.cli.evaluate import LunaEvaluateApp, get_args_parser
from luna.eval.evaluation import classification_of, evaluate, froc_from_json, froc_to_json
from luna.eval.froc import compute_froc
from luna.luna16.rules import FP_RATES
from luna.luna16.csvfiles import Predictions, read_annotations, read_predictions
from tests.conftest import write_csv

PRED_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
ANN_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
PNGS = ["froc.png", "roc.png", "precision_recall.png", "probability_histogram.png"]


@pytest.fixture
def study(tmp_path: Path) -> dict:
    """12 scans, 0-3 nodules each, ~30 candidates per scan, a decent but imperfect model."""
    rng = np.random.default_rng(5)
    preds, ann, excl = [], [], []
    for s in range(12):
        uid = f"1.3.6.1.{s}"
        for _ in range(rng.integers(0, 4)):
            center = rng.uniform(-80, 80, 3)
            ann.append([uid, *center, rng.uniform(4, 20)])
            if rng.random() < 0.85:
                preds.append([uid, *(center + rng.normal(0, 0.5, 3)), rng.uniform(0.3, 1.0)])
        excl.append([uid, *rng.uniform(-80, 80, 3), -1])
        preds.append([uid, *excl[-1][1:4], 0.8])
        for _ in range(30):
            preds.append([uid, *rng.uniform(-150, 150, 3), rng.uniform(0, 0.7) ** 2])
    return {
        "predictions": write_csv(tmp_path / "preds.csv", PRED_COLUMNS, preds),
        "annotations": write_csv(tmp_path / "ann.csv", ANN_COLUMNS, ann),
        "excluded": write_csv(tmp_path / "excl.csv", ANN_COLUMNS, excl),
    }


def argv(study: dict, *extra: str) -> list[str]:
    return [f"--predictions={study['predictions']}", f"--annotations={study['annotations']}",
            f"--excluded={study['excluded']}", *extra]


def test_app_writes_metrics_json_and_figures_matching_compute_froc(study, tmp_path, capsys):
    out_dir = tmp_path / "out"
    LunaEvaluateApp(argv(study, f"--out-dir={out_dir}", "--bootstraps=200", "--seed=3")).main()
    metrics = json.loads((out_dir / "metrics.json").read_text())
    for name in PNGS:
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    preds = read_predictions(study["predictions"])
    expected = compute_froc(preds.series_uids, preds.centers_xyz, preds.probabilities,
                            read_annotations(study["annotations"]), read_annotations(study["excluded"]),
                            n_bootstraps=200, seed=3)
    froc = metrics["froc"]
    assert froc["cpm"] == expected.cpm
    assert froc["cpm_ci"] == list(expected.ci.cpm)
    assert froc["sensitivity_at"] == {str(rate): expected.sensitivity_at[rate] for rate in FP_RATES}
    assert froc["n_scans"] == 12 and froc["n_nodules"] == expected.n_nodules
    assert metrics["counts"]["excluded_candidates"] == 12
    assert metrics["inputs"]["bootstraps"] == 200
    cls = metrics["classification"]
    assert 0.5 < cls["auc/roc"] <= 1 and cls["threshold"] == 0.5
    assert cls["neg_count"] + cls["pos_count"] == len(preds.probabilities) - 12  # excluded candidates left out

    table = capsys.readouterr().out
    assert f"{expected.cpm:6.3f}  [{expected.ci.cpm[0]:.3f}, {expected.ci.cpm[1]:.3f}]" in table
    assert "sensitivity at 0.125 FP/scan" in table and "ROC AUC" in table
    assert f"recall at precision >= 0.3    {cls['pr/recall_at_p0.3']:6.3f}   best" in table


def test_default_out_dir_is_next_to_the_predictions(study):
    app = LunaEvaluateApp(argv(study, "--bootstraps=0"))
    assert app.args.out_dir == study["predictions"].parent / "preds_eval"
    app.main()
    metrics = json.loads((app.args.out_dir / "metrics.json").read_text())
    assert metrics["froc"]["cpm_ci"] is None and metrics["froc"]["bootstrap"] is None


def test_json_curve_keeps_every_step_reading(study):
    preds = read_predictions(study["predictions"])
    result = compute_froc(preds.series_uids, preds.centers_xyz, preds.probabilities,
                          read_annotations(study["annotations"]), n_bootstraps=50)
    data = json.loads(json.dumps(froc_to_json(result), allow_nan=False))
    back = froc_from_json(data)
    assert len(back.fps_per_scan) <= result.n_found + 1 < len(result.fps_per_scan)
    for rate in FP_RATES:  # reading the corner-only curve gives the same sensitivities
        last = np.searchsorted(back.fps_per_scan, rate, side="right") - 1
        assert (back.sensitivity[last] if last >= 0 else 0.0) == result.sensitivity_at[rate]
    assert back.cpm == result.cpm and back.ci.cpm == result.ci.cpm
    np.testing.assert_array_equal(back.ci.band_upper, result.ci.band_upper)


def test_classification_metrics_by_hand():
    labels = np.array([True, True, False, False])
    metrics = classification_of(labels, np.array([0.9, 0.4, 0.6, 0.1]), threshold=0.5)
    assert metrics["auc/roc"] == 0.75  # 3 of the 4 (nodule, other) pairs ranked right
    assert metrics["pr/precision"] == metrics["pr/recall"] == metrics["pr/f1_score"] == 0.5
    assert (metrics["pos_correct"], metrics["neg_count"] - metrics["neg_correct"],
            metrics["pos_count"] - metrics["pos_correct"]) == (1, 1, 1)
    # Ranked 0.9 (nodule), 0.6, 0.4 (nodule): the top one alone keeps precision 1.0 at recall
    # 0.5; taking three gives recall 1.0 at precision 2/3, which still clears 0.3.
    assert metrics["min_precision"] == 0.3 and metrics["pr/recall_at_p0.3"] == 1.0
    assert "loss/all" not in metrics  # no losses for a results file
    one_class = classification_of(np.array([False, False]), np.array([0.2, 0.7]))
    assert math.isnan(one_class["auc/roc"]) and one_class["pr/precision"] == 0.0


def test_evaluate_leaves_excluded_candidates_out_of_per_candidate_figures():
    preds = Predictions(np.array(["a", "a", "a"]), np.array([[0, 0, 0], [50, 0, 0], [99, 0, 0]], float), np.array([0.9, 0.8, 0.1]))
    ann = {"a": np.array([[0, 0, 0, 10.0]])}
    excl = {"a": np.array([[50, 0, 0, -1.0]])}
    result = evaluate(preds, ann, excl, n_bootstraps=0)
    assert result.classification["neg_count"] + result.classification["pos_count"] == 2
    assert result.classification["auc/roc"] == 1.0
    assert result.froc.cpm == 1.0


def run_and_capture(capsys, args: list[str]) -> tuple[int, str]:
    code = run_app(LunaEvaluateApp, args, prog="luna evaluate")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("luna evaluate: error:")]
    return code, lines[0] if len(lines) == 1 else err


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    ("seriesuid,coordX,coordY,coordZ,prob\n", "missing column 'probability'"),
    ("seriesuid,coordX,coordY,coordZ,probability\n", "no predictions"),
    ("seriesuid,coordX,coordY,coordZ,probability\na,1,2,3,0.5\na,1,2,3,NaN\n", ":3: probability is NaN"),
    ("seriesuid,coordX,coordY,coordZ,probability\na,1,2,three,0.5\n", ":2: coordZ is not a number"),
    ("seriesuid,coordX,coordY,coordZ,probability\na,1,2,3,0.5\na,1,2,3,97\n", ":3: probability is 97, expected"),
])
def test_bad_predictions_exit_1_with_one_line(study, tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.csv"
    if content is not None:
        bad.write_text(content)
    code, line = run_and_capture(capsys, [f"--predictions={bad}", f"--annotations={study['annotations']}"])
    assert code == 1
    assert line.startswith("luna evaluate: error:") and expected in line and "bad.csv" in line


def test_an_out_dir_that_is_a_file_is_one_line(study, tmp_path, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("a file")
    code, line = run_and_capture(capsys, argv(study, f"--out-dir={blocker}", "--bootstraps=0"))
    assert code == 1 and line == f"luna evaluate: error: {blocker}: is a file where a folder is expected"


def test_no_nodule_in_evaluated_scans_exits_1(study, tmp_path, capsys):
    series = tmp_path / "series.txt"
    series.write_text("not.a.scan\n")
    code, line = run_and_capture(capsys, argv(study, f"--series-list={series}", "--bootstraps=0"))
    assert code == 1 and "no nodule" in line


def test_flags_are_checked_and_documented(study):
    with pytest.raises(SystemExit) as info:
        LunaEvaluateApp(argv(study, "--threshold=1.5"))
    assert info.value.code == 2
    help_text = get_args_parser().format_help()
    for flag in ("--predictions", "--annotations", "--excluded", "--series-list", "--out-dir", "--threshold",
                 "--bootstraps", "--seed", "--debug"):
        assert flag in help_text
    assert "(default: 1000)" in help_text


def split_csv(path: Path, uids_a: set[str], dest: Path) -> tuple[Path, Path]:
    """Two CSVs with the rows of ``path`` whose seriesuid is / is not in ``uids_a``."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    a = write_csv(dest / f"{path.stem}_a.csv", rows[0], [r for r in rows[1:] if r[0] in uids_a])
    b = write_csv(dest / f"{path.stem}_b.csv", rows[0], [r for r in rows[1:] if r[0] not in uids_a])
    return a, b


def test_several_files_are_scored_as_one_pooled_set(study, tmp_path):
    # Two "sets" of 6 scans each, every file split in two: pooling them must give exactly the
    # figures of the single files.
    parts = tmp_path / "parts"
    parts.mkdir()
    first = {f"1.3.6.1.{s}" for s in range(6)}
    split = {key: split_csv(study[key], first, parts) for key in ("predictions", "annotations", "excluded")}
    series = [write_csv(parts / f"series_{k}.csv", ["seriesuid"], [[u] for u in sorted(uids)])
              for k, uids in (("a", first), ("b", {f"1.3.6.1.{s}" for s in range(6, 12)}))]
    # The bootstrap draws scans by position, so the single run gets the pooled run's scan order.
    in_order = write_csv(tmp_path / "series.csv", ["seriesuid"],
                         [[uid] for path in series for uid in path.read_text().split()[1:]])
    whole = LunaEvaluateApp(argv(study, f"--out-dir={tmp_path / 'whole'}", "--bootstraps=100",
                                 f"--series-list={in_order}")).main()
    pooled_app = LunaEvaluateApp(["--predictions", *map(str, split["predictions"]),
                                  "--annotations", *map(str, split["annotations"]),
                                  "--excluded", *map(str, split["excluded"]),
                                  "--series-list", *map(str, series), "--bootstraps=100"])
    assert pooled_app.args.out_dir == parts / "preds_a_eval"  # beside the first results file
    pooled = pooled_app.main()
    assert pooled.froc.n_scans == 12 and pooled.froc.n_nodules == whole.froc.n_nodules
    assert pooled.froc.cpm == whole.froc.cpm and pooled.froc.ci.cpm == whole.froc.ci.cpm
    assert pooled.classification == whole.classification
    inputs = json.loads((pooled_app.args.out_dir / "metrics.json").read_text())["inputs"]
    assert inputs["predictions"] == [str(p) for p in split["predictions"]]


@pytest.mark.parametrize("flag", ["--predictions", "--annotations"])
def test_a_scan_in_two_pooled_files_exits_1_naming_both(study, capsys, flag):
    key = flag.lstrip("-")
    args = argv(study, "--bootstraps=0") + [flag, str(study[key]), str(study[key])]
    code, line = run_and_capture(capsys, args)
    name = study[key].name
    assert code == 1 and line.count(name) == 2 and "series 1.3.6.1." in line


def test_default_scans_are_those_of_the_predictions_not_every_annotated_one(study, tmp_path, capsys, caplog):
    # A results file of 6 of the 12 scans: by default only those 6 are scored (the other scans'
    # nodules are not counted as missed), a log line says how many annotated scans are left out,
    # and naming every scan with --series-list gives the old, lower figure.
    first = {f"1.3.6.1.{s}" for s in range(6)}
    part_preds, _ = split_csv(study["predictions"], first, tmp_path)
    annotated = set(read_annotations(study["annotations"]))
    with caplog.at_level("INFO"):
        default = LunaEvaluateApp([f"--predictions={part_preds}", f"--annotations={study['annotations']}",
                                   "--bootstraps=0"]).main()
    assert default.froc.n_scans == 6
    left_out = len(annotated - first)
    assert f"{left_out} annotated scans have no predictions and are left out" in caplog.text
    listed = write_csv(tmp_path / "all.csv", ["seriesuid"], [[f"1.3.6.1.{s}"] for s in range(12)])
    everything = LunaEvaluateApp([f"--predictions={part_preds}", f"--annotations={study['annotations']}",
                                  f"--series-list={listed}", "--bootstraps=0"]).main()
    assert everything.froc.n_scans == 12 and everything.froc.cpm < default.froc.cpm
    assert "--series-list" in get_args_parser().format_help()


def test_predictions_of_other_scans_than_the_annotations_exit_1(study, tmp_path, capsys):
    other = write_csv(tmp_path / "other.csv", PRED_COLUMNS, [["9.9.9", 1, 2, 3, 0.5], ["9.9.8", 1, 2, 3, 0.1]])
    code, line = run_and_capture(capsys, [f"--predictions={other}", f"--annotations={study['annotations']}"])
    assert code == 1 and "none of the 2 scans in the predictions has a nodule in the annotations" in line

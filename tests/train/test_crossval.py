"""``luna crossval``: folds by subset, pooling, skipping finished folds, and one tiny end-to-end run."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from luna.cli.common import run_app
from luna.cli.crossval import LunaCrossvalApp
from luna.cli.predict import LunaPredictApp
from luna.eval.evaluation import evaluate, read_pooled_findings
from luna.luna16.csvfiles import read_predictions, write_predictions
from luna.runtime.checkpoint import load_checkpoint
from luna.train.config import TrainConfig
from luna.train.crossval import CrossvalConfig, plan_folds, pool_folds, results_path, run_crossval
from luna.train.trainer import ClassifierTrainer
from tests.conftest import make_tiny_luna


def crossval(*argv: str) -> int:
    return run_app(LunaCrossvalApp, list(argv), prog="luna crossval")


def error_lines(capsys) -> list[str]:
    """stderr without the timestamped log records."""
    lines = capsys.readouterr().err.strip().splitlines()
    return [line for line in lines if not re.match(r"\d{4}-\d\d-\d\d \d\d:", line)]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def data(tmp_path) -> dict:
    return make_tiny_luna(tmp_path / "luna", n_series=6, negatives_per_scan=3)  # subsets 0 .. 5


def fake_results(data: dict, out_dir: Path, plan, folds, seed: int = 0) -> None:
    """Results files for some folds: every candidate of the fold's scans, random probabilities."""
    rng = np.random.default_rng(seed)
    for k in folds:
        rows = [row for row in data["candidates"] if row[0] in set(plan.series[k])]
        path = results_path(out_dir, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_predictions(path, [r[0] for r in rows], np.array([r[1:4] for r in rows], dtype=float),
                          rng.uniform(0, 1, len(rows)))


def test_pooling_equals_scoring_the_concatenated_results(data, tmp_path):
    out_dir = tmp_path / "xval"
    config = CrossvalConfig(train=TrainConfig(data_dir=data["root"]), out_dir=out_dir, folds=3, bootstraps=50)
    plan = plan_folds(data["root"], 3)
    fake_results(data, out_dir, plan, range(3))
    pooled = pool_folds(config, plan)

    # The same rows in one file, scored as luna evaluate scores a file.
    concatenated = tmp_path / "all.csv"
    rows = [row for k in range(3) for row in read_rows(results_path(out_dir, k))]
    write_predictions(concatenated, [r["seriesuid"] for r in rows],
                      np.array([[float(r[c]) for c in ("coordX", "coordY", "coordZ")] for r in rows]),
                      np.array([float(r["probability"]) for r in rows]))
    annotations = read_pooled_findings([data["root"] / "annotations.csv"])
    expected = evaluate(read_predictions(concatenated), annotations, n_bootstraps=50, seed=0)
    assert pooled.evaluation.to_dict() == expected.to_dict()

    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["froc"]["cpm"] == pytest.approx(expected.froc.cpm)
    assert metrics["froc"]["cpm_ci"] is not None
    assert metrics["crossval"]["pooled_folds"] == [0, 1, 2] and metrics["crossval"]["missing_folds"] == []
    assert [row["subsets"] for row in metrics["crossval"]["per_fold"]] == [[0, 3], [1, 4], [2, 5]]
    assert [row["n_scans"] for row in metrics["crossval"]["per_fold"]] == [2, 2, 2]
    assert {p.name for p in out_dir.glob("*.png")} == {"froc.png", "roc.png", "precision_recall.png",
                                                       "probability_histogram.png"}


def test_pool_only_pools_what_is_there_and_names_the_missing_folds(data, tmp_path, capsys, caplog):
    out_dir = tmp_path / "xval"
    argv = ["--data-dir", str(data["root"]), "--out-dir", str(out_dir), "--bootstraps", "0"]
    assert crossval(*argv, "--pool-only") == 1
    assert "no crossval.json" in error_lines(capsys)[0]

    config = CrossvalConfig(train=TrainConfig(data_dir=data["root"]), out_dir=out_dir, folds=3, pool_only=True)
    plan = plan_folds(data["root"], 3)
    (out_dir).mkdir()
    (out_dir / "crossval.json").write_text(json.dumps({"data_dir": plan.data_dir, "subsets": plan.subsets,
                                                       "series": plan.series}))
    assert crossval(*argv, "--pool-only") == 1
    assert "no fold is finished" in error_lines(capsys)[0]
    fake_results(data, out_dir, plan, [0, 2])
    with caplog.at_level("WARNING"):
        pooled = run_crossval(config)
    assert "fold(s) 1 are not finished" in caplog.text
    assert pooled.pooled_folds == [0, 2] and pooled.missing_folds == [1]
    assert pooled.evaluation.froc.n_scans == 4
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["crossval"]["missing_folds"] == [1]


def test_rerun_must_agree_with_the_out_dir_and_torchrun_takes_one_fold(data, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "xval"
    plan = plan_folds(data["root"], 2)
    fake_results(data, out_dir, plan, [0, 1])
    argv = ["--data-dir", str(data["root"]), "--out-dir", str(out_dir), "--bootstraps", "0"]
    assert crossval(*argv, "--folds", "2") == 0  # both folds finished: nothing trains, it pools
    assert (out_dir / "metrics.json").is_file()
    assert crossval(*argv, "--folds", "3") == 2
    assert "holds a 2-fold cross-validation, not --folds 3" in error_lines(capsys)[0]
    assert crossval(*argv, "--fold", "2") == 2
    assert "--fold 2: the folds are 0 .. 1" in error_lines(capsys)[0]
    (data["root"] / "subset0").rename(data["root"] / "subset9")  # a scan of fold 0 now lies in fold 1
    assert crossval(*argv) == 2
    assert "holds folds of other scans" in error_lines(capsys)[0]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert crossval(*argv) == 2
    assert "under torchrun, train one fold per launch: add --fold K" in error_lines(capsys)[0]


def test_folds_flag_needs_two(capsys):
    with pytest.raises(SystemExit) as info:
        LunaCrossvalApp(["--out-dir", "x", "--folds", "1"])
    assert info.value.code == 2
    assert "at least 2 folds" in capsys.readouterr().err


def test_end_to_end_folds_hold_out_their_subsets_and_a_rerun_skips_them(tmp_path, monkeypatch):
    data = make_tiny_luna(tmp_path / "luna", n_series=4, negatives_per_scan=3)
    out_dir = tmp_path / "xval"
    argv = ["--data-dir", str(data["root"]), "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out_dir),
            "--folds", "2", "--val-stride", "2", "--epochs", "1", "--epoch-size", "16", "--batch-size", "8",
            "--num-workers", "0", "--model", "luna", "--precision", "fp32", "--channels-last", "off",
            "--tta-views", "1", "--bootstraps", "20"]
    pooled = LunaCrossvalApp(argv).main()
    plan = plan_folds(data["root"], 2)
    assert plan.subsets == [[0, 2], [1, 3]]

    # Each fold scored exactly its held-out scans, and its run never saw them.
    scored = [{r["seriesuid"] for r in read_rows(results_path(out_dir, k))} for k in range(2)]
    assert scored == [set(plan.series[0]), set(plan.series[1])]
    assert not scored[0] & scored[1] and scored[0] | scored[1] == set(data["uids"])
    for k in range(2):
        (run_dir,) = [p for p in (out_dir / f"fold{k}" / "runs").iterdir() if (p / "run.json").is_file()]
        ckpt = load_checkpoint(run_dir / "best.pt")
        assert ckpt["args"]["holdout_series"] == plan.series[k]
        assert ckpt["data"]["train_scans"] + ckpt["data"]["val_scans"] == 2
        assert {r["seriesuid"] for r in read_rows(run_dir / "val_predictions.csv")}.isdisjoint(plan.series[k])
        # luna predict --split val of a fold's run scores the fold's held-out scans, as crossval did.
        again = tmp_path / f"again{k}.csv"
        assert run_app(LunaPredictApp, ["--checkpoint", str(run_dir), "--split", "val", "--tta-views", "1",
                                        "--precision", "fp32", "--channels-last", "off", "--out", str(again)]) == 0
        assert again.read_text() == results_path(out_dir, k).read_text()
    assert pooled.pooled_folds == [0, 1] and pooled.evaluation.froc.n_scans == 4

    # A rerun trains nothing; a fold trained but not scored is only scored again.
    def no_training(self):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(ClassifierTrainer, "fit", no_training)
    before = results_path(out_dir, 1).read_text()
    assert LunaCrossvalApp(argv).main().pooled_folds == [0, 1]
    results_path(out_dir, 1).unlink()
    assert LunaCrossvalApp([*argv, "--fold", "1"]).main().pooled_folds == [0, 1]
    assert results_path(out_dir, 1).read_text() == before


def test_crossval_takes_the_training_flags_with_their_defaults():
    assert LunaCrossvalApp(["--out-dir", "x"]).config.train == TrainConfig()
    config = LunaCrossvalApp(["--out-dir", "x", "--lr", "0.01", "--epochs", "3", "--fold", "1", "mine"]).config
    assert (config.train.lr, config.train.epochs, config.train.comment, config.fold) == (0.01, 3, "mine", 1)
    with pytest.raises(SystemExit):
        LunaCrossvalApp(["--out-dir", "x", "--resume", "somewhere"])  # crossval places and resumes runs itself

"""`luna train --resume RUN` continues the run: its own flags, only safe changes, and a word when
there is nothing left to train. The end-to-end cases are the ones measured on a killed run."""
import csv
import dataclasses
from pathlib import Path

import pytest

from luna.cli.common import run_app
from luna.cli.train import LunaTrainingApp
from luna.errors import UsageError
from luna.runtime.checkpoint import load_checkpoint
from luna.train.config import TrainConfig
from luna.train.resume import check_resume
from luna.train.trainer import ClassifierTrainer
from tests.conftest import make_tiny_luna, train_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return {**make_tiny_luna(root / "luna", n_series=4, negatives_per_scan=6), "cache": root / "cache"}


def _argv(data, tmp_path, *extra) -> list[str]:
    """A tiny run's flags; the crop cache is shared by the module's runs (filled once)."""
    argv = train_argv(data["root"], tmp_path, *extra)
    argv[argv.index("--cache-dir") + 1] = str(data["cache"])
    return argv


def _killed_run(data, tmp_path, monkeypatch) -> Path:
    """A 2-epoch run (--val-stride 2, not the default) stopped right after its first checkpoint."""
    save = ClassifierTrainer._save

    def save_then_die(self, epoch, val_metrics):
        save(self, epoch, val_metrics)
        raise KeyboardInterrupt  # as a kill between epochs leaves it

    monkeypatch.setattr(ClassifierTrainer, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        LunaTrainingApp(_argv(data, tmp_path, "--epochs", "2", "--epoch-size", "8")).main()
    monkeypatch.undo()
    (run_dir,) = [p for p in (tmp_path / "runs" / "luna").iterdir() if (p / "run.json").exists()]
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    return run_dir


def _epochs(run_dir: Path) -> list[str]:
    with open(run_dir / "summary.csv") as handle:
        return [row["epoch"] for row in csv.DictReader(handle)]


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("luna train: error:")]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("extra", [
    [],  # was: looked for the default data dir
    ["data", "cache"],  # was: "Finished" after epoch 1, having trained nothing (--epochs fell back to 1)
    ["--epochs", "2"],  # was: a traceback, the default --val-stride 10 giving other negatives
], ids=["alone", "data-and-cache-dir", "epochs-without-val-stride"])
def test_a_killed_run_resumes_with_its_own_flags(data, tmp_path, monkeypatch, caplog, extra):
    run_dir = _killed_run(data, tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)  # no data/luna16 here: the data dir must come from the run
    if extra == ["data", "cache"]:
        extra = ["--data-dir", str(data["root"]), "--cache-dir", str(data["cache"])]
    with caplog.at_level("INFO"):
        assert run_app(LunaTrainingApp, ["--resume", str(run_dir), *extra], prog="luna train") == 0
    assert f"Resuming {run_dir} after epoch 1" in caplog.text
    assert _epochs(run_dir) == ["1", "2"]
    last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == 2 and last["samples_seen"] == 16
    assert last["args"]["val_stride"] == 2 and last["args"]["epoch_size"] == 8


def test_a_finished_run_says_there_is_nothing_left_to_train(data, tmp_path, capsys):
    assert run_app(LunaTrainingApp, _argv(data, tmp_path, "--epochs", "1", "--epoch-size", "8")) == 0
    (run_dir,) = [p for p in (tmp_path / "runs" / "luna").iterdir() if (p / "run.json").exists()]
    before = (run_dir / "last.pt").read_bytes()
    for extra in ([], ["--epochs", "1"]):
        assert run_app(LunaTrainingApp, ["--resume", str(run_dir), *extra], prog="luna train") == 2
        assert _error(capsys) == (f"luna train: error: --resume {run_dir}: the run has trained 1 epochs already "
                                  "(--epochs 1); pass --epochs 2 or more to train on")
    assert (run_dir / "last.pt").read_bytes() == before


def test_a_resume_that_would_change_the_split_is_refused_and_touches_nothing(data, tmp_path, monkeypatch, capsys):
    # Measured: --val-stride 10 --hard-negatives 0 trained on, with a former validation scan in training.
    run_dir = _killed_run(data, tmp_path, monkeypatch)
    before = (run_dir / "last.pt").read_bytes()
    code = run_app(LunaTrainingApp, ["--resume", str(run_dir), "--val-stride", "10", "--hard-negatives", "0"],
                   prog="luna train")
    assert code == 2
    assert _error(capsys) == (f"luna train: error: --resume {run_dir}: the run was trained with --val-stride 2, "
                              "not --val-stride 10; a resume continues the run as it was (start a new run to "
                              "change it)")
    assert (run_dir / "last.pt").read_bytes() == before and _epochs(run_dir) == ["1"]


# -- which changes a resume accepts, without training -------------------------------------------

def _ckpt(config: TrainConfig, epoch: int = 1) -> dict:
    return {"epoch": epoch, "args": {k: str(v) if isinstance(v, Path) else v
                                     for k, v in dataclasses.asdict(config).items()}}


RUN = TrainConfig(data_dir=Path("/data/old"), val_stride=2, epochs=3, candidates=Path("/nowhere/candidates.csv"))


@pytest.mark.parametrize("change", [
    {"epochs": 5}, {"lr": 1e-4}, {"num_workers": 8}, {"device": "cpu"}, {"precision": "fp32"},
    {"channels_last": "off"}, {"compile": True}, {"data_dir": Path("/data/new")}, {"cache_dir": Path("/c")},
    {"candidates": Path("/moved/candidates.csv")},  # the run's file is gone: the data moved
])
def test_safe_changes_are_accepted(change):
    check_resume(dataclasses.replace(RUN, resume=Path("r"), **change), _ckpt(RUN), Path("r"))


@pytest.mark.parametrize("change, said", [
    ({"val_stride": 10}, "--val-stride 2, not --val-stride 10"),
    ({"split": "candidate"}, "--split scan, not --split candidate"),
    ({"model": "luna"}, "--model luna_twoscale, not --model luna"),
    ({"optimizer": "sgd"}, "--optimizer adamw, not --optimizer sgd"),
    ({"balanced": 0}, "--balanced 1, not --balanced 0"),
    ({"seed": 1}, "--seed 0, not --seed 1"),
    ({"crop_edge": "shift"}, "--crop-edge pad, not --crop-edge shift"),
    ({"augmented": False}, "--augment, not --no-augment"),
    ({"epoch_size": 100}, "no --epoch-size, not --epoch-size 100"),
    ({"weight_decay": 0.0}, "--weight-decay 0.0001, not --weight-decay 0"),
    ({"tb_single_writer": True}, "no --tb-single-writer, not --tb-single-writer"),
])
def test_changes_of_data_split_or_model_are_refused_naming_the_flag(change, said):
    with pytest.raises(UsageError, match=f"the run was trained with {said};"):
        check_resume(dataclasses.replace(RUN, **change), _ckpt(RUN), Path("r"))


def test_another_candidates_file_is_refused_while_the_runs_is_there(tmp_path):
    mine = tmp_path / "candidates.csv"
    mine.write_text("x")
    run = dataclasses.replace(RUN, candidates=mine)
    with pytest.raises(UsageError, match="--candidates"):
        check_resume(dataclasses.replace(run, candidates=tmp_path / "other.csv"), _ckpt(run), Path("r"))

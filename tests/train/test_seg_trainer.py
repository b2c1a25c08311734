"""``luna train-seg`` end to end on tiny phantom scans (CPU, seconds each): the run directory,
TensorBoard and an exact resume."""
import csv
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from luna.cli.train_seg import LunaTrainSegApp
from luna.errors import UsageError
from luna.runtime.checkpoint import load_checkpoint
from luna.synth import make_dataset
from luna.train.seg_trainer import SegTrainer


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("seg") / "luna", n_series=4, seed=2, size="tiny").out_dir


def _argv(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "--cache-dir", str(tmp_path.parent / "cache"), "--runs-dir",
            str(tmp_path / "runs"), "--val-stride", "3", "--pixel-mm", "3", "--slice-mm", "2.5", "--epoch-size", "24",
            "--batch-size", "8", "--num-workers", "0", "--precision", "fp32", *extra]


def _run_dir(tmp_path: Path) -> Path:
    (run_dir,) = [p for p in (tmp_path / "runs" / "seg").iterdir() if (p / "run.json").exists()]
    return run_dir


def _summary(run_dir: Path) -> list[dict]:
    with open(run_dir / "summary.csv") as handle:
        return list(csv.DictReader(handle))


def test_a_run_writes_summary_tensorboard_images_and_checkpoints(data, tmp_path, caplog):
    with caplog.at_level("INFO"):
        run_dir = LunaTrainSegApp(_argv(data, tmp_path, "--epochs", "2")).main()
    assert "E2 val_seg" in caplog.text and "candidates hit" in caplog.text
    rows = _summary(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["samples_seen"] for r in rows] == ["24", "48"]
    for key in ("trn_loss/all", "trn_pr/recall", "val_pr/precision", "val_pr/recall", "val_pr/f1_score",
                "val_candidates/recall", "val_candidates/per_scan"):
        assert rows[-1][key] != "", key
    ckpt = load_checkpoint(run_dir / "best.pt")
    assert ckpt["model_name"] == "unet2d" and ckpt["epoch"] == 2 and ckpt["args"]["pixel_mm"] == 3.0
    val_dir = next((tmp_path / "runs" / "seg").glob("*-val_seg-seg"))
    events = EventAccumulator(str(val_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert {"pr/precision", "pr/recall", "pr/f1_score", "candidates/recall"} <= set(events.Tags()["scalars"])
    assert any(tag.startswith("example_0/") for tag in events.Tags()["images"])
    assert [e.step for e in events.Scalars("pr/f1_score")] == [24, 48]


def test_resume_after_an_interrupted_epoch_gives_the_uninterrupted_figures(data, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    expected = _summary(LunaTrainSegApp(_argv(data, straight, "--epochs", "2")).main())

    interrupted = tmp_path / "interrupted"
    save = SegTrainer._save

    def save_then_die(self, epoch):
        save(self, epoch)
        if epoch == 1:
            raise KeyboardInterrupt  # as if killed right after the checkpoint of epoch 1

    monkeypatch.setattr(SegTrainer, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        LunaTrainSegApp(_argv(data, interrupted, "--epochs", "2")).main()
    monkeypatch.setattr(SegTrainer, "_save", save)
    run_dir = _run_dir(interrupted)
    assert [r["epoch"] for r in _summary(run_dir)] == ["1"]
    # The run's own arguments come back with it: --resume alone is enough.
    LunaTrainSegApp(["--resume", str(run_dir)]).main()
    rows = _summary(run_dir)
    for key in ("epoch", "samples_seen", "trn_loss/all", "trn_pr/f1_score", "val_pr/f1_score",
                "val_candidates/per_scan"):
        assert [r[key] for r in rows] == [r[key] for r in expected], key
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 2


def test_resume_refuses_a_flag_that_would_change_the_run(data, tmp_path):
    run_dir = LunaTrainSegApp(_argv(data, tmp_path, "--epochs", "1")).main()
    with pytest.raises(UsageError, match="it ran with --val-stride 3, not 2"):
        LunaTrainSegApp(["--resume", str(run_dir), "--val-stride", "2"]).main()
    with pytest.raises(UsageError, match="not a segmentation run"):
        LunaTrainSegApp(["--resume", str(_classifier_run(tmp_path))]).main()


def _classifier_run(tmp_path: Path) -> Path:
    from luna.runtime.checkpoint import make_checkpoint, save_checkpoint
    from luna.models.registry import build_model
    run_dir = tmp_path / "cls_run"
    run_dir.mkdir()
    model = build_model({"name": "luna"})
    save_checkpoint(run_dir / "last.pt", make_checkpoint(model_name="luna", model_config=model.config,
                                                          model_state=model.state_dict(), epoch=1, samples_seen=1,
                                                          args={"model": "luna"}))
    return run_dir

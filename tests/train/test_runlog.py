"""Tests for luna.runlog: TensorBoard event files read back with tensorboard's own reader, the
purge on resume, and the per-epoch summary CSV."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from luna.train.engine import epoch_metrics
from luna.runtime.rundir import read_summary
from luna.train.runlog import RunLogger, SCALAR_TAGS


def _records(seed: int, n: int = 40) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 4 == 0).astype(np.float32)
    preds = np.clip(labels * 0.5 + rng.random(n) * 0.5, 0, 1).astype(np.float32)
    return torch.tensor(np.stack([labels, preds, rng.random(n).astype(np.float32)]))


def _read(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def _log(logger: RunLogger, step: int, seed: int) -> None:
    for mode in ("trn", "val"):
        records = _records(seed)
        logger.log_epoch(mode, epoch_metrics(records), records, step)


def test_two_lazy_writers_with_every_tag_at_samples_seen(tmp_path):
    logger = RunLogger(tmp_path / "tb", "2026-01-01_00.00.00", "demo", tmp_path / "run")
    assert not (tmp_path / "tb").exists()  # nothing written, nothing created
    _log(logger, step=64, seed=0)
    _log(logger, step=128, seed=1)
    logger.close()
    for mode in ("trn", "val"):
        acc = _read(tmp_path / "tb" / f"2026-01-01_00.00.00-{mode}_cls-demo")
        # froc/cpm is only logged when validation scoring adds it to the metrics.
        assert set(acc.Tags()["scalars"]) == set(SCALAR_TAGS) - {"froc/cpm"}
        assert [e.step for e in acc.Scalars("loss/all")] == [64, 128]
        assert set(acc.Tags()["histograms"]) == {"is_neg", "is_pos"}
        assert acc.Tags()["tensors"] == ["pr"]  # the precision-recall curve


def test_single_writer_prefixes_tags(tmp_path):
    logger = RunLogger(tmp_path / "tb", "run", "one", tmp_path / "run", single_writer=True)
    _log(logger, step=10, seed=0)
    logger.close()
    (log_dir,) = (tmp_path / "tb").iterdir()
    assert log_dir.name == "run-cls-one"
    tags = _read(log_dir).Tags()["scalars"]
    assert {"trn/loss/all", "val/auc/roc"} <= set(tags) and "loss/all" not in tags


def test_purge_step_hides_points_written_after_the_checkpoint(tmp_path):
    first = RunLogger(tmp_path / "tb", "run", "c", tmp_path / "run")
    for step in (100, 200, 300):  # the run was killed after 300 but checkpointed at 200
        _log(first, step, seed=step)
    first.close()
    # Event files are named <seconds>.<host>.<pid>.<counter> and read in name order; a real
    # resume starts seconds later in a new process, so its file sorts after the old one.
    time.sleep(1.1)
    resumed = RunLogger(tmp_path / "tb", "run", "c", tmp_path / "run", purge_step=201)
    _log(resumed, 300, seed=7)
    resumed.close()
    acc = _read(tmp_path / "tb" / "run-val_cls-c")
    assert [e.step for e in acc.Scalars("loss/all")] == [100, 200, 300]
    expected = epoch_metrics(_records(7))["loss/all"]
    assert acc.Scalars("loss/all")[-1].value == pytest.approx(expected, rel=1e-6)


def test_summary_rows_append_and_truncate(tmp_path):
    logger = RunLogger(tmp_path / "tb", "run", "c", tmp_path / "run")
    (tmp_path / "run").mkdir()
    for epoch in (1, 2, 3):
        logger.append_summary({"epoch": epoch, "samples_seen": epoch * 10, "val_auc/roc": 0.5 + epoch / 10})
    logger.append_summary({"epoch": 4, "samples_seen": 40, "val_auc/roc": 0.9, "extra": 1})
    rows = read_summary(tmp_path / "run")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[0]["val_auc/roc"] == "0.6" and rows[0]["extra"] == "" and rows[3]["extra"] == "1"
    logger.truncate_summary(2)
    assert [r["epoch"] for r in read_summary(tmp_path / "run")] == ["1", "2"]
    assert not list((tmp_path / "run").glob(".*tmp*"))  # atomic writes leave no temp files

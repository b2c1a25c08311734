"""A real 2-process torchrun training run on CPU (gloo): one code path for 1..N processes."""
import csv
import os
import subprocess
import sys

import numpy as np
import torch

from luna.runtime.checkpoint import load_checkpoint
from luna.data.dataset import LunaDataset
from luna.runtime.device import StepConfig
from luna.train.engine import evaluate
from luna.train.engine import epoch_metrics
from luna.models.registry import build_model
from tests.conftest import make_tiny_luna


def test_torchrun_two_processes_train_gather_and_checkpoint(tmp_path):
    data = make_tiny_luna(tmp_path / "luna", n_series=4, negatives_per_scan=7)  # 9 per scan: odd counts
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "luna", "train", "--data-dir", str(data["root"]), "--cache-dir", str(cache),
           "--runs-dir", str(runs), "--val-stride", "4", "--batch-size", "4", "--num-workers", "0",
           "--epoch-size", "24", "--epochs", "2", "--precision", "fp32", "--device", "cpu", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Epoch 1 of 2: 3 training and 2 validation batches of 4*2 samples" in result.stderr
    # Rank 0 alone logs: each epoch line appears once.
    assert result.stderr.count("E2 val      ") == 2  # the metrics line and the CPM line
    (run_dir,) = [p for p in (runs / "luna").iterdir() if (p / "run.json").exists()]

    # Validation covers every held-out candidate exactly once, despite the sampler's padding.
    val_ds = LunaDataset(data["root"], val_stride=4, is_val=True, cache_dir=cache)
    with open(run_dir / "val_predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    keys = sorted((r["seriesuid"], round(float(r["coordX"]), 4)) for r in rows)
    expected = sorted((c.series_uid, round(c.center_xyz.x, 4)) for c in val_ds.candidates)
    assert len(val_ds) % 2 == 1 and keys == expected
    with open(run_dir / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    assert [r["samples_seen"] for r in summary] == ["24", "48"]
    last = summary[-1]
    assert int(float(last["val_neg_count"])) + int(float(last["val_pos_count"])) == len(val_ds)

    # The checkpoint loads in one process, and its validation metrics equal the gathered ones.
    ckpt = load_checkpoint(run_dir / "last.pt")
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model_state"])
    val_ds.return_index = True
    loader = torch.utils.data.DataLoader(val_ds, batch_size=8)
    metrics_t, _ = evaluate(model, loader, StepConfig(torch.device("cpu")), epoch=2)
    single = epoch_metrics(metrics_t)
    np.testing.assert_allclose(single["loss/all"], float(last["val_loss/all"]), rtol=1e-4)
    np.testing.assert_allclose(single["correct/all"], float(last["val_correct/all"]), rtol=1e-4)

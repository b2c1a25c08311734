"""A classifier that takes a context crop (``luna_context``): ``luna predict`` and an exported
model cut it the way training's cache does, and score what the model scores on those crops."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from luna.cli.common import run_app
from luna.cli.export import LunaExportApp
from luna.cli.predict import LunaPredictApp
from luna.data.crops import CropConfig
from luna.data.dataset import LunaDataset
from luna.infer.modelcard import card_path
from luna.luna16.csvfiles import read_predictions
from luna.models.registry import build_model
from luna.runtime.checkpoint import make_checkpoint, save_checkpoint
from tests.conftest import make_tiny_luna


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("context")
    data = make_tiny_luna(root / "luna", n_series=2, negatives_per_scan=4)
    torch.manual_seed(0)
    model = build_model({"name": "luna_context", "conv_channels": 4, "centre_channels": 4, "context_channels": 2})
    with torch.no_grad():
        # Statistics that suit HU and a head that reads every feature keep the scores apart
        # (fresh, the model gives every crop about 0.5 and a comparison would prove nothing).
        model.tail_batchnorm.running_mean.fill_(-300.0)
        model.tail_batchnorm.running_var.fill_(600.0 ** 2)
        model.head_linear.weight.normal_(std=0.05)
    model.eval()
    run_dir = root / "run"
    run_dir.mkdir()
    ckpt = make_checkpoint(model_name="luna_context", model_config=model.config, model_state=model.state_dict(),
                           epoch=1, samples_seen=0, metric_name="epoch", metric_value=1.0,
                           args={"val_stride": 2, "split": "scan", "data_dir": str(data["root"]), "crop_edge": "pad",
                                 "crop_mm": 1.0},
                           data={"train_scans": 1, "train_candidates": 6, "val_scans": 1, "val_candidates": 6},
                           val_metrics={"froc/cpm": 0.5})
    save_checkpoint(run_dir / "best.pt", ckpt)
    return {"root": root, "data": data, "model": model, "run_dir": run_dir}


def predict(*argv: str) -> int:
    return run_app(LunaPredictApp, list(argv), prog="luna predict")


def test_predict_scores_the_cached_two_channel_crops(setup, tmp_path):
    out = tmp_path / "p.csv"
    assert predict("--checkpoint", str(setup["run_dir"]), "--data-dir", str(setup["data"]["root"]), "--split", "all",
                   "--precision", "fp32", "--tta-views", "1", "--nms-mm", "0", "--out", str(out)) == 0
    got = read_predictions(out)
    ds = LunaDataset(setup["data"]["root"], val_stride=0, cache_dir=tmp_path / "cache", crop=CropConfig(context=2))
    by_center = {(uid, *np.round(c, 4)): p for uid, c, p in zip(got.series_uids, got.centers_xyz, got.probabilities)}
    expected, scored = [], []
    with torch.no_grad():
        for ndx, info in enumerate(ds.candidates):
            crop = ds[ndx][0]
            assert crop.shape == (2, 32, 48, 48)
            expected.append(setup["model"](crop.unsqueeze(0))[1][0, 1].item())
            scored.append(by_center[(info.series_uid, *np.round(info.center_xyz, 4))])
    assert len(list((tmp_path / "cache" / CropConfig(context=2).key()).glob("*.npy"))) == 2  # a cache of its own
    expected_a = np.array(expected)
    assert ((0.01 < expected_a) & (expected_a < 0.99)).all() and expected_a.std() > 0.01, "would prove nothing"
    np.testing.assert_allclose(scored, expected_a, atol=1e-3)


def test_exported_model_takes_and_describes_two_channels(setup, tmp_path):
    onnx = tmp_path / "model.onnx"
    assert run_app(LunaExportApp, ["--checkpoint", str(setup["run_dir"]), "--format", "onnx", "--out", str(onnx)],
                   prog="luna export") == 0
    common = ["--data-dir", str(setup["data"]["root"]), "--split", "all"]
    assert predict("--checkpoint", str(setup["run_dir"]), *common, "--precision", "fp32",
                   "--out", str(tmp_path / "checkpoint.csv")) == 0
    assert predict("--checkpoint", str(onnx), *common, "--out", str(tmp_path / "exported.csv")) == 0
    expected, got = read_predictions(tmp_path / "checkpoint.csv"), read_predictions(tmp_path / "exported.csv")
    np.testing.assert_array_equal(got.centers_xyz, expected.centers_xyz)
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-3)
    card = json.loads(card_path(onnx).read_text())
    assert card["input"]["shape"] == ["N", 2, 32, 48, 48] and card["crop"]["context"] == 2

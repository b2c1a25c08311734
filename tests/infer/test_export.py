"""``luna export`` and exported models in ``luna predict``: the same scores as the checkpoint, a
card that says what the model takes, and one line for each kind of bad input."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from luna.cli.common import run_app
from luna.cli.export import LunaExportApp
from luna.cli.predict import LunaPredictApp
from luna.infer.exported import load_exported
from luna.infer.modelcard import INTENDED_USE, card_path
from luna.luna16.csvfiles import read_predictions
from luna.runtime.checkpoint import make_checkpoint, save_checkpoint
from tests.conftest import make_spread_model, make_tiny_luna

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Tiny data, a run directory with a checkpoint, and that checkpoint exported in both formats."""
    root = tmp_path_factory.mktemp("export")
    data = make_tiny_luna(root / "luna", n_series=2, negatives_per_scan=4)
    model = make_spread_model(hu_mean=-300.0, hu_std=600.0, head_scale=0.2)
    run_dir = root / "run"
    run_dir.mkdir()
    ckpt = make_checkpoint(model_name="luna", model_config=model.config, model_state=model.state_dict(), epoch=3,
                           samples_seen=96, metric_name="epoch", metric_value=3.0,
                           args={"val_stride": 2, "split": "scan", "data_dir": str(data["root"]), "crop_edge": "pad"},
                           data={"train_scans": 1, "train_candidates": 6, "val_scans": 1, "val_candidates": 6},
                           val_metrics={"froc/cpm": 0.5, "auc/roc": float("nan")})
    save_checkpoint(run_dir / "best.pt", ckpt)
    exported = {}
    for fmt, name in FORMATS.items():
        assert export(root, "--checkpoint", str(run_dir), "--format", fmt, "--out", str(root / name)) == 0
        exported[fmt] = root / name
    return {"root": root, "data": data, "model": model, "run_dir": run_dir, "exported": exported}


def export(root: Path, *argv: str) -> int:
    return run_app(LunaExportApp, list(argv), prog="luna export")


def predict(*argv: str) -> int:
    return run_app(LunaPredictApp, list(argv), prog="luna predict")


def error_lines(capsys) -> list[str]:
    lines = capsys.readouterr().err.strip().splitlines()
    return [line for line in lines if not re.match(r"\d{4}-\d\d-\d\d \d\d:", line)]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_exported_outputs_match_the_checkpoint_on_a_batch(setup, fmt):
    exported = load_exported(setup["exported"][fmt], fmt, "cpu")
    generator = torch.Generator().manual_seed(1)
    for batch in (5, 2):  # the batch dimension is free
        x = (-300 + 600 * torch.randn((batch, 1, 32, 48, 48), generator=generator)).clamp(-1000, 1000)
        with torch.inference_mode():
            logits, probabilities = setup["model"](x)
            got_logits, got_probabilities = exported.model(x)
        assert got_logits.shape == (batch, 2) and got_probabilities.shape == (batch, 2)
        assert ((0.01 < probabilities[:, 1]) & (probabilities[:, 1] < 0.99)).all(), "saturated: proves nothing"
        np.testing.assert_allclose(got_logits.numpy(), logits.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(got_probabilities.numpy(), probabilities.numpy(), atol=1e-5)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_predict_through_the_exported_model_writes_the_checkpoints_results(setup, tmp_path, fmt):
    # Default views (8) and suppression (10 mm): the exported model gets the same crops, views and NMS.
    common = ["--data-dir", str(setup["data"]["root"]), "--split", "all"]
    assert predict("--checkpoint", str(setup["run_dir"]), *common, "--precision", "fp32",
                   "--out", str(tmp_path / "checkpoint.csv")) == 0
    assert predict("--checkpoint", str(setup["exported"][fmt]), *common, "--out", str(tmp_path / "exported.csv")) == 0
    expected, got = read_predictions(tmp_path / "checkpoint.csv"), read_predictions(tmp_path / "exported.csv")
    assert got.series_uids.tolist() == expected.series_uids.tolist()
    np.testing.assert_array_equal(got.centers_xyz, expected.centers_xyz)
    assert len(set(np.round(expected.probabilities, 3))) > len(expected.probabilities) // 2, "too few distinct scores"
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-3)


def test_card_describes_input_training_metrics_and_use(setup):
    path = setup["exported"]["onnx"]
    card = json.loads(card_path(path).read_text())
    assert card_path(path).name == "model.onnx.json"
    assert card["intended_use"] == INTENDED_USE and "not for diagnosis" in card["intended_use"]
    assert card["model_file"]["format"] == "onnx" and card["model_file"]["bytes"] == path.stat().st_size
    assert card["input"]["shape"] == ["N", 1, 32, 48, 48] and card["input"]["axis_order"] == "N,1,I,R,C"
    assert card["input"]["hu_window"] == [-1000, 1000] and card["input"]["dtype"] == "float32"
    assert card["crop"]["edge"] == "pad" and card["crop"]["voxel_mm"] == 0
    assert card["prediction"]["tta_views"] == 8 and len(card["prediction"]["views"]) == 8
    assert card["prediction"]["nms_mm"] == 10.0
    assert card["training"]["data_dir"] == str(setup["data"]["root"])
    assert card["training"]["data"]["train_candidates"] == 6
    assert card["metrics"]["epoch"] == 3 and card["metrics"]["validation"] == {"froc/cpm": 0.5, "auc/roc": None}
    assert card["export_check"]["max_abs_difference"] <= 1e-3
    assert card["luna_version"]


def copy_export(setup, tmp_path: Path, fmt: str) -> Path:
    """A copy of an exported model and its card, to break one of them."""
    source = setup["exported"][fmt]
    target = tmp_path / source.name
    target.write_bytes(source.read_bytes())
    card_path(target).write_text(card_path(source).read_text())
    return target


def edit_card(path: Path, edit) -> None:
    card = json.loads(card_path(path).read_text())
    edit(card)
    card_path(path).write_text(json.dumps(card))


def other_shape(card: dict) -> None:
    card["input"]["shape"] = ["N", 1, 16, 48, 48]
    card["crop"]["shape_irc"] = [16, 48, 48]


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("case, expected", [
    ("card missing", "no model card"),
    ("hash differs", "does not match its card"),
    ("shape differs", "16, 48, 48"),
    ("not a card", "not a luna model card"),
])
def test_a_card_that_is_missing_or_does_not_match_is_one_line(setup, tmp_path, capsys, fmt, case, expected):
    path = copy_export(setup, tmp_path, fmt)
    if case == "card missing":
        card_path(path).unlink()
    elif case == "hash differs":
        edit_card(path, lambda card: card["model_file"].update(sha256="0" * 64))
    elif case == "shape differs":
        edit_card(path, other_shape)
    else:
        card_path(path).write_text('{"format": "something else"}')
    out = tmp_path / "out.csv"
    assert predict("--checkpoint", str(path), "--data-dir", str(setup["data"]["root"]), "--out", str(out)) == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("luna predict: error: ") and expected in lines[0], lines
    assert not out.exists()


def test_exports_bad_input_is_one_line(setup, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        LunaExportApp(["--checkpoint", str(setup["run_dir"]), "--format", "keras"])
    assert info.value.code == 2 and "invalid choice: 'keras'" in capsys.readouterr().err

    not_luna = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, not_luna)
    cases = [
        (["--checkpoint", str(not_luna)], 1, "not a luna checkpoint"),
        (["--checkpoint", str(setup["exported"]["torchscript"])], 1, "an exported torchscript model, not a luna"),
        (["--checkpoint", str(setup["run_dir"]), "--out", str(tmp_path / "model.pt")], 2, "must end in .onnx"),
        (["--checkpoint", str(setup["run_dir"]), "--format", "torchscript", "--out", str(tmp_path / "m.onnx")], 2,
         "must not end in .onnx"),
        (["--checkpoint", str(setup["run_dir"]), "--out", str(tmp_path)], 2, "is a directory"),
    ]
    for argv, status, expected in cases:
        assert export(tmp_path, *argv) == status, argv
        lines = error_lines(capsys)
        assert len(lines) == 1 and lines[0].startswith("luna export: error: ") and expected in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt"]


def test_exported_models_run_in_float32_only(setup, capsys):
    assert predict("--checkpoint", str(setup["exported"]["onnx"]), "--precision", "bf16") == 2
    assert "runs in float32" in error_lines(capsys)[0]


def test_without_onnxruntime_one_line_says_what_to_install(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    assert predict("--checkpoint", str(setup["exported"]["onnx"]), "--out", str(tmp_path / "p.csv")) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "needs onnxruntime: pip install 'luna[onnx]'" in lines[0], lines
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert export(tmp_path, "--checkpoint", str(setup["run_dir"]), "--out", str(tmp_path / "m.onnx")) == 2
    assert "exporting to ONNX needs onnx and onnxscript" in error_lines(capsys)[0]
    assert not (tmp_path / "m.onnx").exists()

"""``luna predict`` and ``luna prepcache`` on the same phantom scans as MetaImage, NIfTI and DICOM."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from luna.cli.common import run_app
from luna.cli.predict import LunaPredictApp
from luna.cli.prepcache import LunaPrepCacheApp
from luna.io.dicom import dicom_files
from luna.io.writers import SCAN_FORMATS
from luna.luna16.csvfiles import read_predictions
from luna.runtime.checkpoint import make_checkpoint, save_checkpoint
from luna.synth.phantom import make_dataset
from tests.conftest import make_spread_model


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> dict:
    """Two tiny phantom scans (the second with every axis stored reversed) in each format, and a
    freshly seeded model whose scores spread over (0, 1)."""
    root = tmp_path_factory.mktemp("formats")
    data = {fmt: make_dataset(root / fmt, n_series=2, seed=7, size="tiny", scan_format=fmt).out_dir
            for fmt in SCAN_FORMATS}
    model = make_spread_model(hu_mean=-300.0, hu_std=600.0, head_scale=0.2)
    ckpt = make_checkpoint(model_name="luna", model_config=model.config, model_state=model.state_dict(),
                           epoch=1, samples_seen=0, args={"val_stride": 2, "split": "scan", "crop_edge": "pad"})
    (root / "run").mkdir()
    save_checkpoint(root / "run" / "best.pt", ckpt)
    return {"data": data, "ckpt": root / "run" / "best.pt"}


def predict(ckpt: Path, data_dir: Path, out: Path) -> int:
    return run_app(LunaPredictApp, ["--checkpoint", str(ckpt), "--data-dir", str(data_dir), "--split", "all",
                                    "--precision", "fp32", "--tta-views", "1", "--nms-mm", "0", "--out", str(out)],
                   prog="luna predict")


def test_predict_gives_the_same_rows_in_every_format(formats, tmp_path):
    results = {}
    for fmt, data_dir in formats["data"].items():
        assert predict(formats["ckpt"], data_dir, tmp_path / f"{fmt}.csv") == 0
        results[fmt] = read_predictions(tmp_path / f"{fmt}.csv")
    reference = results["mhd"]
    spread = (0.01 < reference.probabilities) & (reference.probabilities < 0.99)
    assert spread.mean() > 0.5, "saturated scores: the comparison would prove nothing"
    assert len(set(reference.series_uids)) == 2
    for fmt, got in results.items():
        assert got.series_uids.tolist() == reference.series_uids.tolist(), fmt
        np.testing.assert_allclose(got.centers_xyz, reference.centers_xyz, atol=0.5, err_msg=fmt)
        np.testing.assert_allclose(got.probabilities, reference.probabilities, atol=1e-3, err_msg=fmt)


def test_a_broken_dicom_series_stops_predict_with_one_line(formats, tmp_path, capsys):
    data_dir = tmp_path / "dicom"
    shutil.copytree(formats["data"]["dicom"], data_dir)
    folder = next(p for p in data_dir.glob("subset*/*") if p.is_dir())
    dicom_files(folder)[5].unlink()
    out = tmp_path / "out.csv"
    capsys.readouterr()
    assert predict(formats["ckpt"], data_dir, out) == 1
    # Log records (timestamped) precede it; the error itself is one line.
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert len(err) == 1 and err[0].startswith("luna predict: error: "), err
    assert str(folder) in err[0] and "uneven slice positions" in err[0]
    assert not out.exists()


def test_prepcache_fills_dicom_and_nifti_scans_and_sees_a_changed_slice(formats, tmp_path, caplog):
    for fmt in ("nifti", "dicom"):
        argv = ["--data-dir", str(formats["data"][fmt]), "--cache-dir", str(tmp_path / fmt), "--num-workers", "0"]
        assert LunaPrepCacheApp(argv).main() == 2
        assert LunaPrepCacheApp(argv).main() == 0
    # One slice file rewritten: its scan (and only it) is cropped again.
    folder = next(p for p in formats["data"]["dicom"].glob("subset*/*") if p.is_dir())
    path = dicom_files(folder)[3]
    path.write_bytes(path.read_bytes())
    argv = ["--data-dir", str(formats["data"]["dicom"]), "--cache-dir", str(tmp_path / "dicom"), "--num-workers", "0"]
    assert LunaPrepCacheApp(argv).main() == 1

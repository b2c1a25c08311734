"""``luna detect``: one results file whatever the number of processes, the JSON per scan, the
pictures, and the errors a user can make."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from luna.cli.detect import LunaDetectApp
from luna.errors import UsageError
from luna.infer.findings import merge_rows
from luna.luna16.csvfiles import read_predictions
from luna.models.registry import build_model
from luna.runtime.checkpoint import make_checkpoint, save_checkpoint
from luna.synth import make_dataset
from tests.conftest import make_spread_model


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("detect") / "luna", n_series=3, seed=4, size="tiny").out_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """An untrained segmentation model that marks blobs here and there, and a classifier whose
    scores spread over (0, 1): enough to check the plumbing, not the quality."""
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    segmenter = build_model({"name": "unet2d", "channels": 4, "depth": 2})
    with torch.no_grad():
        segmenter.input_batchnorm.running_mean.fill_(-600.0)
        segmenter.input_batchnorm.running_var.fill_(300.0 ** 2)
    classifier = make_spread_model(crop_shape_irc=(32, 48, 48), hu_mean=-600.0, hu_std=400.0)
    paths = []
    for name, model, args in (("seg", segmenter, {"pixel_mm": 3.0, "slice_mm": 2.5}),
                              ("cls", classifier, {"crop_edge": "pad"})):
        run_dir = root / name
        run_dir.mkdir()
        save_checkpoint(run_dir / "best.pt", make_checkpoint(
            model_name=model.name, model_config=model.config, model_state=model.state_dict(), epoch=1,
            samples_seen=1, args=args))
        paths.append(run_dir)
    return paths[0], paths[1]


def _argv(runs, out: Path, *extra: str) -> list[str]:
    return ["--segmentation", str(runs[0]), "--classifier", str(runs[1]), "--out", str(out), "--tta-views", "2",
            "--precision", "fp32", "--threshold", "0.5", *extra]


def test_merge_puts_rows_in_scan_order_whichever_process_did_the_scan():
    rank0 = [(0, [["a", "1"]]), (2, [["c", "1"], ["c", "2"]])]
    rank1 = [(1, []), (3, [["d", "1"]])]
    assert merge_rows([rank0, rank1]) == [["a", "1"], ["c", "1"], ["c", "2"], ["d", "1"]]
    assert merge_rows([rank1, rank0]) == merge_rows([rank0, rank1])
    with pytest.raises(ValueError, match="detected twice"):
        merge_rows([rank0, rank0])


def test_results_json_and_pictures_of_a_data_dir(data, runs, tmp_path):
    out = tmp_path / "results.csv"
    LunaDetectApp(_argv(runs, out, "--data-dir", str(data), "--pictures")).main()
    predictions = read_predictions(out)
    folder = tmp_path / "results_findings"
    scans = sorted(folder.glob("*.json"))
    assert len(scans) == 3 and set(predictions.series_uids) <= {p.stem for p in scans}
    report = json.loads(scans[0].read_text())
    assert set(report["geometry"]) == {"origin_xyz", "spacing_xyz", "direction", "shape_irc"}
    findings = report["findings"]
    assert findings, "the untrained segmenter marks something in every scan"
    assert [f["rank"] for f in findings] == list(range(1, len(findings) + 1))
    assert [f["probability"] for f in findings] == sorted((f["probability"] for f in findings), reverse=True)
    first = findings[0]
    assert {"center_xyz", "center_irc", "diameter_mm", "classifier_probability"} <= set(first)
    rows = predictions.centers_xyz[predictions.series_uids == report["seriesuid"]]
    assert np.allclose(sorted(map(tuple, rows)), sorted(tuple(f["center_xyz"]) for f in findings))
    drawn = sorted(folder.glob("*.png"))
    called = sum(f["probability"] > 0.5 for p in scans for f in json.loads(p.read_text())["findings"])
    assert len(drawn) == called


def test_scan_files_instead_of_a_data_dir(data, runs, tmp_path):
    scan = sorted(data.rglob("*.mhd"))[0]
    out = LunaDetectApp(_argv(runs, tmp_path / "one.csv", str(scan))).main()
    assert set(read_predictions(out).series_uids) == {scan.stem}
    with pytest.raises(UsageError, match="not both"):
        LunaDetectApp(_argv(runs, tmp_path / "x.csv", str(scan), "--data-dir", str(data))).main()
    with pytest.raises(UsageError, match="holds a classifier model"):
        LunaDetectApp(["--segmentation", str(runs[1]), "--classifier", str(runs[1]), "--out",
                       str(tmp_path / "x.csv"), str(scan)]).main()
    assert not (tmp_path / "x.csv").exists()


def test_two_torchrun_processes_write_the_single_process_file(data, runs, tmp_path):
    # Both runs in processes of one thread each, so that they compute alike to the last bit.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = [sys.executable, "-m", "luna", "detect", *_argv(runs, tmp_path / "single.csv", "--data-dir", str(data))]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "luna",
           "detect", *_argv(runs, tmp_path / "ddp.csv", "--data-dir", str(data), "--device", "cpu")]
    for cmd in (single, ddp):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "Detecting in 3 scans (2 process(es))" in result.stderr
    assert (tmp_path / "ddp.csv").read_text() == (tmp_path / "single.csv").read_text()
    assert len(read_predictions(tmp_path / "ddp.csv").series_uids) > 0
    assert len(list((tmp_path / "ddp_findings").glob("*.json"))) == 3

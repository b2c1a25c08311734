"""``luna predict`` end to end on tiny scans: the results file, the split, and bad inputs."""
from __future__ import annotations

import re

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from luna.cli.common import run_app
from luna.runtime.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from luna.data.crops import CropConfig
from luna.data.dataset import LunaDataset
from luna.luna16.csvfiles import read_predictions
from luna.cli.predict import LunaPredictApp
from luna.luna16.csvfiles import PREDICTION_COLUMNS
from luna.eval.suppression import NMS_RADIUS_MM, suppress_neighbours

from tests.conftest import make_spread_model, make_tiny_luna

VAL_STRIDE = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Tiny data and a run directory with a real checkpoint as best.pt."""
    root = tmp_path_factory.mktemp("predict")
    data = make_tiny_luna(root / "luna", n_series=4, negatives_per_scan=4)
    # Tiny scans: most crops reach past the volume, and padded ones hold much air.
    model = make_spread_model(hu_mean=-300.0, hu_std=600.0, head_scale=0.2)
    run_dir = root / "runs" / "luna" / "2024-01-01_00.00.00-test"
    run_dir.mkdir(parents=True)
    ckpt = make_checkpoint(model_name="luna", model_config=model.config, model_state=model.state_dict(),
                           epoch=1, samples_seen=0,
                           args={"val_stride": VAL_STRIDE, "split": "scan", "data_dir": str(data["root"])})
    save_checkpoint(run_dir / "best.pt", ckpt)
    return {"root": root, "data": data, "model": model, "run_dir": run_dir, "ckpt": run_dir / "best.pt"}


def read_results(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def predict(*argv: str) -> int:
    return run_app(LunaPredictApp, list(argv), prog="luna predict")


def dihedral_views(crop: np.ndarray) -> list[np.ndarray]:
    """The 8 in-plane symmetries of an (I, R, C) crop, built independently of luna.models.views."""
    turns = [np.rot90(crop, k, axes=(1, 2)) for k in range(4)]
    return turns + [t[:, :, ::-1] for t in turns]


@pytest.mark.parametrize("crop_edge, views, crop_mm", [("pad", None, None), (None, "1", None), ("pad", "1", 1.5)])
def test_val_split_scores_match_the_dataset(setup, tmp_path, monkeypatch, crop_edge, views, crop_mm):
    monkeypatch.chdir(tmp_path)  # a cache dir, if one were made, would land here
    ckpt_path = setup["ckpt"]
    if crop_edge is not None:
        ckpt = load_checkpoint(ckpt_path)
        ckpt["args"]["crop_edge"] = crop_edge
        if crop_mm is not None:
            ckpt["args"]["crop_mm"] = crop_mm
        ckpt_path = tmp_path / "ckpt" / "best.pt"
        ckpt_path.parent.mkdir()
        save_checkpoint(ckpt_path, ckpt)
    before = files_under(setup["root"])
    out = tmp_path / "out" / "val.csv"
    assert predict("--checkpoint", str(ckpt_path), "--data-dir", str(setup["data"]["root"]),
                   "--precision", "fp32", "--out", str(out), "--nms-mm", "0",
                   *(["--tta-views", views] if views else [])) == 0

    header, rows = read_results(out)
    assert header == list(PREDICTION_COLUMNS)
    # Nothing written but the results file: no cache, no temp files, nothing beside the checkpoint.
    assert files_under(setup["root"]) == before
    assert files_under(tmp_path) == {out} | ({ckpt_path} if crop_edge else set())

    # Cropped as the run was trained; a checkpoint from before --crop-edge used the shift rule.
    ds = LunaDataset(setup["data"]["root"], val_stride=VAL_STRIDE, is_val=True, cache_dir=tmp_path / "cache",
                     crop=CropConfig(edge=crop_edge or "shift", voxel_mm=crop_mm or 0.0))
    assert len(rows) == len(ds.candidates)
    assert {r[0] for r in rows} == {c.series_uid for c in ds.candidates}
    got = {(r[0], float(r[1]), float(r[2]), float(r[3])): float(r[4]) for r in rows}
    assert len(got) == len(rows)
    model = setup["model"]
    expected = []
    with torch.no_grad():
        for ndx, info in enumerate(ds.candidates):
            crop = ds[ndx][0]
            if views == "1":
                expected.append(model(crop.unsqueeze(0))[1][0, 1].item())
            else:  # by default, the mean logits of the 8 symmetric views
                batch = torch.from_numpy(np.stack(dihedral_views(crop[0].numpy()))[:, None].copy())
                logits = model(batch)[0].mean(dim=0)
                expected.append(torch.softmax(logits, dim=0)[1].item())
            # Coordinates are the candidates' own, exactly.
            assert (info.series_uid, *info.center_xyz) in got
    expected_a = np.array(expected)
    got_a = np.array([got[(c.series_uid, *c.center_xyz)] for c in ds.candidates])
    assert ((0.01 < expected_a) & (expected_a < 0.99)).all(), "saturated: the comparison would prove nothing"
    assert ((0 <= got_a) & (got_a <= 1)).all()
    np.testing.assert_allclose(got_a, expected_a, atol=1e-3)


def test_default_nms_lowers_near_neighbours_only(setup, tmp_path):
    """The default results equal the raw ones after per-scan suppression, and it bites here."""
    # Each candidate gets a twin 3 mm away (the tiny scans' own candidates lie far apart), towards
    # another candidate of its scan, so the twin stays inside the scan.
    candidates = tmp_path / "candidates.csv"
    rows = setup["data"]["candidates"]
    with open(candidates, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "class"])
        for uid, x, y, z, label in rows:
            here = np.array([x, y, z], dtype=float)
            other = next(np.array(r[1:4], dtype=float) for r in rows
                         if r[0] == uid and np.linalg.norm(np.array(r[1:4], dtype=float) - here) > 3)
            twin = here + 3.0 * (other - here) / np.linalg.norm(other - here)
            writer.writerows([[uid, x, y, z, label], [uid, *twin.tolist(), 0]])
    common = ["--checkpoint", str(setup["ckpt"]), "--split", "all", "--precision", "fp32", "--tta-views", "1",
              "--candidates", str(candidates)]
    raw_csv, nms_csv = tmp_path / "raw.csv", tmp_path / "nms.csv"
    assert predict(*common, "--nms-mm", "0", "--out", str(raw_csv)) == 0
    assert predict(*common, "--out", str(nms_csv)) == 0
    raw, nms = read_predictions(raw_csv), read_predictions(nms_csv)
    assert raw.series_uids.tolist() == nms.series_uids.tolist()
    np.testing.assert_array_equal(raw.centers_xyz, nms.centers_xyz)
    expected = suppress_neighbours(raw.centers_xyz, raw.probabilities, NMS_RADIUS_MM, raw.series_uids)
    np.testing.assert_allclose(nms.probabilities, expected, rtol=1e-5)
    lowered = nms.probabilities < raw.probabilities * 0.5
    assert 0 < lowered.sum() < len(lowered)  # some rows suppressed, not all
    # Every lowered row has a neighbour in its scan, closer than the radius, that scores as high.
    for i in np.flatnonzero(lowered):
        same = raw.series_uids == raw.series_uids[i]
        near = np.linalg.norm(raw.centers_xyz - raw.centers_xyz[i], axis=1) < NMS_RADIUS_MM
        assert (raw.probabilities[same & near] >= raw.probabilities[i]).sum() >= 2  # itself and another


def test_splits_partition_the_scans_and_default_out(setup, tmp_path):
    data_dir = str(setup["data"]["root"])
    run_dir = setup["run_dir"]
    uids = {}
    try:
        for split in ("val", "train", "all"):
            # The run directory stands for its best.pt; the output lands beside it.
            assert predict("--checkpoint", str(run_dir), "--data-dir", data_dir, "--split", split,
                           "--precision", "fp32", "--batch-size", "5", "--no-prefetch") == 0
            header, rows = read_results(run_dir / f"predictions_{split}.csv")
            assert header == list(PREDICTION_COLUMNS)
            uids[split] = [r[0] for r in rows]
    finally:
        for split in ("val", "train", "all"):
            (run_dir / f"predictions_{split}.csv").unlink(missing_ok=True)
    train_ds = LunaDataset(data_dir, val_stride=VAL_STRIDE, is_val=False, cache_dir=tmp_path / "cache")
    assert set(uids["train"]) == {c.series_uid for c in train_ds.candidates}
    assert len(uids["train"]) == len(train_ds.candidates)
    assert not set(uids["val"]) & set(uids["train"])
    assert sorted(uids["all"]) == sorted(uids["val"] + uids["train"])
    assert len(uids["all"]) == len(setup["data"]["candidates"])


def test_series_filter_defaults_to_all_and_data_dir_from_checkpoint(setup, tmp_path):
    uid = setup["data"]["uids"][1]
    out = tmp_path / "one.csv"
    # No --data-dir: the training run's is used.
    assert predict("--checkpoint", str(setup["ckpt"]), "--series", uid, "--out", str(out),
                   "--precision", "fp32") == 0
    _, rows = read_results(out)
    assert {r[0] for r in rows} == {uid}
    assert len(rows) == sum(1 for c in setup["data"]["candidates"] if c[0] == uid)


def test_works_without_annotations(setup, tmp_path):
    data_dir = tmp_path / "luna"
    shutil.copytree(setup["data"]["root"], data_dir)
    (data_dir / "annotations.csv").unlink()
    with_ann, without_ann = tmp_path / "a.csv", tmp_path / "b.csv"
    common = ["--checkpoint", str(setup["ckpt"]), "--precision", "fp32"]
    assert predict(*common, "--data-dir", str(setup["data"]["root"]), "--out", str(with_ann)) == 0
    assert predict(*common, "--data-dir", str(data_dir), "--split", "val", "--out", str(without_ann)) == 0
    # The scan split does not depend on diameters: same scans, same scores.
    assert sorted(read_results(with_ann)[1]) == sorted(read_results(without_ann)[1])


def test_bf16_is_close_to_fp32(setup, tmp_path):
    uid = setup["data"]["uids"][0]
    outs = {}
    for precision in ("fp32", "bf16"):
        outs[precision] = tmp_path / f"{precision}.csv"
        assert predict("--checkpoint", str(setup["ckpt"]), "--series", uid, "--precision", precision,
                       "--out", str(outs[precision])) == 0
    fp32, bf16 = (np.array([float(r[4]) for r in read_results(outs[p])[1]]) for p in ("fp32", "bf16"))
    np.testing.assert_allclose(bf16, fp32, atol=0.05)


def corrupt(path: Path) -> Path:
    path.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    return path


@pytest.mark.parametrize("case", ["missing checkpoint", "corrupted checkpoint", "empty run dir",
                                  "unknown series", "series of the other split", "missing data dir"])
def test_bad_inputs_exit_1_with_one_line_and_write_nothing(setup, tmp_path, capsys, case):
    ckpt, data_dir = str(setup["ckpt"]), str(setup["data"]["root"])
    argv = {
        "missing checkpoint": ["--checkpoint", str(tmp_path / "nope.pt"), "--data-dir", data_dir],
        "corrupted checkpoint": ["--checkpoint", str(corrupt(tmp_path / "bad.pt")), "--data-dir", data_dir],
        "empty run dir": ["--checkpoint", str(tmp_path), "--data-dir", data_dir],
        "unknown series": ["--checkpoint", ckpt, "--data-dir", data_dir, "--series", "1.2.3.999"],
        "series of the other split": ["--checkpoint", ckpt, "--data-dir", data_dir, "--split", "val",
                                      "--series", *setup["data"]["uids"]],
        "missing data dir": ["--checkpoint", ckpt, "--data-dir", str(tmp_path / "no-such-dir")],
    }[case]
    out = tmp_path / "sub" / "out.csv"
    before = files_under(tmp_path)
    assert predict(*argv, "--out", str(out)) == 1
    # Log records (timestamped) may precede it; the error itself is one line and no traceback.
    lines = capsys.readouterr().err.strip().splitlines()
    err = [line for line in lines if not re.match(r"\d{4}-\d\d-\d\d \d\d:", line)]
    assert len(err) == 1 and err[0].startswith("luna predict: error: "), lines
    expected_word = {"unknown series": "1.2.3.999", "missing data dir": "no-such-dir",
                     "missing checkpoint": "nope.pt", "corrupted checkpoint": "bad.pt",
                     "empty run dir": "best.pt", "series of the other split": "--split all"}[case]
    assert expected_word in err[0]
    assert files_under(tmp_path) == before and not out.parent.exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        LunaPredictApp(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--checkpoint", "--data-dir", "--series", "--split", "--out", "--batch-size", "--device",
                 "--precision", "--tta-views", "--nms-mm"):
        assert flag in text


def test_negative_nms_radius_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        LunaPredictApp(["--checkpoint", "x.pt", "--nms-mm", "-1"])
    assert exc.value.code == 2
    assert "--nms-mm: must be a finite number >= 0, got -1" in capsys.readouterr().err


def test_out_that_is_a_directory_is_a_usage_error(setup, tmp_path, capsys):
    assert predict("--checkpoint", str(setup["ckpt"]), "--out", str(tmp_path)) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_out_under_a_file_is_one_line_naming_it(setup, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file")
    assert predict("--checkpoint", str(setup["ckpt"]), "--out", str(blocker / "p.csv"), "--series",
                   setup["data"]["uids"][0], "--tta-views", "1") == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == [f"luna predict: error: {blocker}: is a file where a folder is expected"]


def test_results_file_reads_back_for_scoring(setup, tmp_path):
    out = tmp_path / "p.csv"
    assert predict("--checkpoint", str(setup["ckpt"]), "--split", "all", "--out", str(out),
                   "--precision", "fp32") == 0
    predictions = read_predictions(out)
    assert len(predictions.probabilities) == len(setup["data"]["candidates"])
    written = sorted((uid, *xyz) for uid, xyz in zip(predictions.series_uids.tolist(),
                                                      predictions.centers_xyz.tolist()))
    assert written == sorted((uid, float(x), float(y), float(z)) for uid, x, y, z, _ in setup["data"]["candidates"])


def test_other_data_dir_scores_every_scan_by_default(setup, tmp_path):
    # A copy is "new data" for the checkpoint: nothing of it was held out, so all of it is scored.
    data_dir = tmp_path / "new_scans"
    shutil.copytree(setup["data"]["root"], data_dir)
    own, new = tmp_path / "own.csv", tmp_path / "new.csv"
    common = ["--checkpoint", str(setup["ckpt"]), "--precision", "fp32"]
    assert predict(*common, "--data-dir", str(setup["data"]["root"]), "--out", str(own)) == 0
    assert predict(*common, "--data-dir", str(data_dir), "--out", str(new)) == 0
    assert len(read_results(own)[1]) < len(read_results(new)[1]) == len(setup["data"]["candidates"])


def test_checkpoint_with_an_unknown_crop_edge_is_a_one_line_data_error(setup, tmp_path, capsys):
    ckpt = load_checkpoint(setup["ckpt"])
    ckpt["args"]["crop_edge"] = "wrap"
    path = tmp_path / "edited.pt"
    save_checkpoint(path, ckpt)
    out = tmp_path / "out.csv"
    assert predict("--checkpoint", str(path), "--data-dir", str(setup["data"]["root"]), "--out", str(out)) == 1
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not re.match(r"\d{4}-\d\d-\d\d \d\d:", line)]
    assert len(err) == 1 and "edited.pt" in err[0] and "crop edge" in err[0], err
    assert not out.exists()


def test_compare_views_script_reproduces_the_eight_view_score(setup, tmp_path):
    # tools/compare_views.py rescored with --min-probability 0 must give the results file's
    # own CPM on its 8-view line, with and without suppression.
    import subprocess
    import sys

    from luna.eval.evaluation import read_pooled_findings
    from luna.eval.froc import compute_froc

    out = tmp_path / "p.csv"
    assert predict("--checkpoint", str(setup["ckpt"]), "--split", "all", "--out", str(out), "--nms-mm", "0") == 0
    script = Path(__file__).resolve().parents[2] / "tools" / "compare_views.py"
    done = subprocess.run([sys.executable, str(script), str(setup["ckpt"]), "--data-dir", str(setup["data"]["root"]),
                           "--predictions", str(out), "--min-probability", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("8 views"))
    cpm_plain, cpm_nms = (float(v) for v in line.split()[-2:])
    predictions = read_predictions(out)
    annotations = read_pooled_findings([setup["data"]["root"] / "annotations.csv"])
    series = sorted(set(predictions.series_uids.tolist()))
    args = (predictions.series_uids, predictions.centers_xyz)
    expected_plain = compute_froc(*args, predictions.probabilities, annotations, None, series).cpm
    suppressed = suppress_neighbours(predictions.centers_xyz, predictions.probabilities, NMS_RADIUS_MM,
                                     predictions.series_uids)
    expected_nms = compute_froc(*args, suppressed, annotations, None, series).cpm
    assert cpm_plain == pytest.approx(expected_plain, abs=2e-3)
    assert cpm_nms == pytest.approx(expected_nms, abs=2e-3)
    assert len([line for line in done.stdout.splitlines() if "view" in line]) >= 5
    # scans the data dir does not hold: one line naming the results file, exit 1
    partial = tmp_path / "partial"
    shutil.copytree(setup["data"]["root"], partial)
    next(partial.rglob("*.mhd")).unlink()
    wrong = subprocess.run([sys.executable, str(script), str(setup["ckpt"]), "--data-dir", str(partial),
                            "--predictions", str(out)], capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1
    assert str(out) in wrong.stderr and "not in" in wrong.stderr


def test_two_torchrun_processes_write_the_single_process_file(setup, tmp_path):
    # One thread per process, so that both runs compute alike to the last bit.
    import os
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = ["predict", "--checkpoint", str(setup["ckpt"]), "--split", "all", "--device", "cpu"]
    single = [sys.executable, "-m", "luna", *argv, "--out", str(tmp_path / "single.csv")]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "luna",
           *argv, "--out", str(tmp_path / "ddp.csv")]
    for cmd in (single, ddp):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "of 4 scans (all split, val_stride=2, split=scan; 2 process(es))" in result.stderr
    assert (tmp_path / "ddp.csv").read_text() == (tmp_path / "single.csv").read_text()
    assert len(read_predictions(tmp_path / "ddp.csv").series_uids) == len(setup["data"]["candidates"])

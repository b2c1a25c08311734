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
from luna.luna16.geometry import irc2xyz
from tests.conftest import make_spread_model, write_csv, write_scan


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
    with pytest.raises(ValueError, match="done by two processes"):
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


def test_the_findings_are_the_most_probable_after_the_views_and_the_suppression(data, runs, tmp_path):
    # The cap cuts after scoring every candidate as luna predict does (one view, all views for
    # the best --tta-top, suppression), so capped findings are the head of the uncapped list.
    scan = sorted(data.rglob("*.mhd"))[0]

    def findings(cap: int) -> list[tuple[float, tuple]]:
        out = tmp_path / f"cap{cap}.csv"
        LunaDetectApp(_argv(runs, out, str(scan), "--max-candidates", str(cap), "--tta-top", "3")).main()
        (report,) = (tmp_path / f"cap{cap}_findings").glob("*.json")
        return [(f["probability"], tuple(f["center_xyz"])) for f in json.loads(report.read_text())["findings"]]

    everything = findings(10_000)
    assert len(everything) > 5, "the blobs and the segmenter give more candidates than the cap"
    assert findings(5) == everything[:5]


@pytest.mark.parametrize("as_files", [False, True], ids=["data-dir", "scan-args"])
def test_the_same_scans_as_metaimage_nifti_and_dicom_give_the_same_findings(runs, tmp_path, as_files):
    # Seed 7's second scan is stored with every axis reversed: the readers must agree on it too.
    results = {}
    for fmt in ("mhd", "nifti", "dicom"):
        root = make_dataset(tmp_path / fmt, n_series=2, seed=7, size="tiny", scan_format=fmt).out_dir
        if as_files:
            scans = sorted(p for p in root.glob("subset*/*") if p.suffix != ".raw")
            argv = _argv(runs, tmp_path / f"{fmt}.csv", *map(str, scans))
        else:
            argv = _argv(runs, tmp_path / f"{fmt}.csv", "--data-dir", str(root))
        results[fmt] = read_predictions(LunaDetectApp(argv).main())
    reference = results["mhd"]
    assert len(set(reference.series_uids)) == 2 and len(reference.series_uids) >= 4
    for fmt, got in results.items():
        assert got.series_uids.tolist() == reference.series_uids.tolist(), fmt
        np.testing.assert_allclose(got.centers_xyz, reference.centers_xyz, atol=0.5, err_msg=fmt)
        np.testing.assert_allclose(got.probabilities, reference.probabilities, atol=1e-3, err_msg=fmt)


def test_a_folder_of_two_dicom_series_names_both_and_series_uid_picks_one(runs, tmp_path, capsys):
    import shutil
    from luna.cli.common import run_app
    root = make_dataset(tmp_path / "dicom", n_series=2, seed=7, size="tiny", scan_format="dicom").out_dir
    folders = sorted(p for p in root.glob("subset*/*") if p.is_dir())
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for k, folder in enumerate(folders):
        for path in folder.iterdir():
            shutil.copy(path, mixed / f"s{k}-{path.name}")
    out = tmp_path / "d.csv"
    assert run_app(LunaDetectApp, _argv(runs, out, str(mixed)), prog="luna detect") == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("luna detect: error")]
    assert len(errors) == 1, errors
    err = errors[0]
    assert "holds 2 DICOM series: " in err and "--series-uid UID" in err, err
    assert all(f"{folder.name} (" in err for folder in folders) and not out.exists()
    picked = folders[1].name
    assert run_app(LunaDetectApp, _argv(runs, out, str(mixed), "--series-uid", picked), prog="luna detect") == 0
    alone = LunaDetectApp(_argv(runs, tmp_path / "alone.csv", str(folders[1]))).main()
    assert out.read_text() == alone.read_text() and set(read_predictions(out).series_uids) == {picked}


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


def dense_tissue_segmenter() -> torch.nn.Module:
    """A U-Net wired by hand to mark the voxels of the middle slice denser than -350 HU: a
    segmenter whose output is known, so that the rest of the pipeline can be checked on real
    phantom nodules without minutes of training."""
    model = build_model({"name": "unet2d", "context": 3, "depth": 2, "channels": 2}).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.weight.fill_(1.0)
        model.input_batchnorm.running_mean.fill_(-400.0)  # HU + 400 from here on; ReLUs keep > -400
        down0, down1, up0 = model.down[0], model.down[1], model.up[0]
        down0[0].weight[0, 3, 1, 1] = 1.0  # the middle slice's own voxel, carried on channel 0
        for conv in (down0[3], down1[0], down1[3], up0[3]):
            conv.weight[0, 0, 1, 1] = 1.0
        up0[0].weight[0, 2, 1, 1] = 1.0  # the skip connection's channel 0 (the coarse path is off)
        model.head.weight[0, 0] = 0.05
        model.head.bias.fill_(-2.5)  # sigmoid(0.05 (HU + 400) - 2.5) > 0.5 above -350 HU
    return model


def write_chests(root: Path, n_scans: int = 3) -> dict[str, np.ndarray]:
    """Small chests drawn by hand: a body, two lungs, nodules of 5-12 mm and a vessel in each lung,
    under a different direction matrix each; the LUNA16 files beside them. Returns the nodules."""
    rng = np.random.default_rng(7)
    directions = [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (1, 0, 0, 0, 1, 0, 0, 0, -1)]
    shape, spacing_xyz = (36, 96, 112), (2.5, 2.5, 3.0)
    i, r, c = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    mm = [i * spacing_xyz[2], r * spacing_xyz[1], c * spacing_xyz[0]]
    nodules, candidates, annotations = {}, [], []
    for s in range(n_scans):
        uid = f"1.2.826.0.1.{s + 1}"
        hu = np.full(shape, -1000, dtype=np.int16)
        hu[((r - 48) / 40.0) ** 2 + ((c - 56) / 50.0) ** 2 <= 1] = 40  # the body
        for side in (-1, 1):  # the lungs
            hu[(i > 2) & (i < 33) & (((r - 48) / 28.0) ** 2 + ((c - 56 - side * 24) / 18.0) ** 2 <= 1)] = -850
            hu[(np.hypot(mm[1] - 155, mm[2] - (140 + side * 60)) < 1.5) & (i > 4) & (i < 30)] = 40  # a vessel
        origin = tuple(float(v) for v in rng.uniform(-150, -50, 3))
        direction = directions[s % 3]
        rows = []
        for side, diameter in ((-1, 5.0 + 3 * s), (1, 12.0 - 2 * s)):
            center_irc = (18 + 4 * side, 40 + 5 * s, 56 + side * 26)
            ball = sum((m - ci * sp) ** 2 for m, ci, sp in zip(mm, center_irc, spacing_xyz[::-1])) <= (diameter / 2) ** 2
            hu[ball] = 40
            xyz = irc2xyz(center_irc, origin, spacing_xyz, direction)
            rows.append([*xyz, diameter])
            candidates.append([uid, *xyz, 1])
        for _ in range(8):  # negatives in the lungs for the classifier to learn from
            irc = (int(rng.integers(6, 30)), int(rng.integers(30, 66)), int(rng.choice([36, 78])))
            candidates.append([uid, *irc2xyz(irc, origin, spacing_xyz, direction), 0])
        write_scan(root / "subset0" / f"{uid}.mhd", hu, origin, spacing_xyz, direction)
        nodules[uid] = np.array(rows)
        annotations += [[uid, *row] for row in rows]
    write_csv(root / "candidates.csv", ["seriesuid", "coordX", "coordY", "coordZ", "class"], candidates)
    write_csv(root / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], annotations)
    return nodules


def test_end_to_end_every_nodule_gets_a_finding_at_its_place(tmp_path):
    # The segmenter is wired by hand (minutes of training would not fit a test): what is checked is
    # the rest of the pipeline on scans of every orientation, from files to a scored results file.
    from luna.cli.evaluate import LunaEvaluateApp
    from luna.cli.train import LunaTrainingApp
    from luna.luna16.rules import hits
    from tests.conftest import train_argv

    data = tmp_path / "chests"
    nodules = write_chests(data)
    cls_run = LunaTrainingApp(train_argv(data, tmp_path, "--epochs", "1", "--epoch-size", "16")).main()
    segmenter = dense_tissue_segmenter()
    seg_run = tmp_path / "seg"
    seg_run.mkdir()
    save_checkpoint(seg_run / "best.pt", make_checkpoint(
        model_name="unet2d", model_config=segmenter.config, model_state=segmenter.state_dict(), epoch=1,
        samples_seen=1, args={"pixel_mm": 0.0, "slice_mm": 0.0}))
    out = tmp_path / "detections.csv"
    LunaDetectApp(["--segmentation", str(seg_run), "--classifier", str(cls_run), "--data-dir", str(data),
                   "--split", "all", "--out", str(out), "--tta-views", "1", "--precision", "fp32"]).main()
    predictions = read_predictions(out)
    sources = set()
    for uid, rows in nodules.items():
        found = predictions.centers_xyz[predictions.series_uids == uid]
        assert hits(found, rows).any(axis=0).all(), f"a nodule of {uid} has no finding within its radius"
        report = json.loads((tmp_path / "detections_findings" / f"{uid}.json").read_text())
        sources |= {f["source"] for f in report["findings"]}
        segmented = [f for f in report["findings"] if f["source"] == "segmentation"]
        for x, y, z, diameter in rows:  # the nodule's own component is sized as drawn
            nearest = min(segmented, key=lambda f: np.linalg.norm(np.subtract(f["center_xyz"], (x, y, z))))
            assert abs(nearest["diameter_mm"] - diameter) < 0.35 * diameter
    assert sources == {"segmentation", "blob"}  # both sources propose, the classifier picks
    LunaEvaluateApp(["--predictions", str(out), "--annotations", str(data / "annotations.csv"),
                     "--out-dir", str(tmp_path / "eval")]).main()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["froc"]["n_found"] == sum(len(rows) for rows in nodules.values())

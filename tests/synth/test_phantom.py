"""The synthetic LUNA16-format data set: layout, determinism, geometry and plausibility."""
from __future__ import annotations

import csv
import hashlib
import os
import re
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from luna.errors import UsageError
from luna.luna16.geometry import xyz2irc, xyz2irc_float
from luna.luna16.csvfiles import ANNOTATION_COLUMNS as ANNOTATION_HEADER
from luna.luna16.csvfiles import CANDIDATE_COLUMNS as CANDIDATE_HEADER
from luna.synth import generate_scan, make_dataset
from luna.synth.phantom import UID_PREFIX


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("phantom") / "luna"
    summary = make_dataset(root, n_series=5, seed=3, size="tiny")
    images = {}
    for mhd in summary.scan_paths:
        image = sitk.ReadImage(str(mhd))
        images[mhd.stem] = (sitk.GetArrayFromImage(image), image.GetOrigin(), image.GetSpacing(),
                            image.GetDirection())
    _, candidates = read_rows(root / "candidates.csv")
    _, annotations = read_rows(root / "annotations.csv")
    return {"root": root, "summary": summary, "images": images,
            "candidates": [(r[0], tuple(map(float, r[1:4])), int(r[4])) for r in candidates],
            "annotations": [(r[0], tuple(map(float, r[1:4])), float(r[4])) for r in annotations]}


def test_layout_and_headers_are_exactly_luna16(tiny):
    root, summary = tiny["root"], tiny["summary"]
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["annotations.csv", "annotations_excluded.csv", "candidates.csv"] + [f"subset{k}" for k in range(10)])
    for i, uid in enumerate(summary.series_uids):
        assert (root / f"subset{i % 10}" / f"{uid}.mhd").is_file()
        assert (root / f"subset{i % 10}" / f"{uid}.raw").is_file()
        header = (root / f"subset{i % 10}" / f"{uid}.mhd").read_text()
        assert "ElementType = MET_SHORT" in header and f"ElementDataFile = {uid}.raw" in header
    assert read_rows(summary.annotations_csv)[0] == list(ANNOTATION_HEADER)
    assert read_rows(summary.excluded_csv)[0] == list(ANNOTATION_HEADER)
    assert read_rows(summary.candidates_csv)[0] == list(CANDIDATE_HEADER)
    assert list(ANNOTATION_HEADER) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert list(CANDIDATE_HEADER) == ["seriesuid", "coordX", "coordY", "coordZ", "class"]
    assert summary.n_positive + summary.n_negative == len(tiny["candidates"])
    assert summary.bytes_written == sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_uids_look_like_lidc_series_uids(tiny):
    uids = tiny["summary"].series_uids
    assert len(set(uids)) == len(uids)
    for uid in uids:
        assert re.fullmatch(re.escape(UID_PREFIX) + r"[1-9]\d{29}", uid), uid


def test_same_seed_same_bytes_other_seed_other_bytes(tiny, tmp_path):
    again = make_dataset(tmp_path / "again", n_series=5, seed=3, size="tiny")
    assert tree_hashes(again.out_dir) == tree_hashes(tiny["root"])
    other = make_dataset(tmp_path / "other", n_series=2, seed=4, size="tiny")
    assert not set(other.series_uids) & set(tiny["summary"].series_uids)


def test_scan_depends_only_on_seed_and_index_also_with_workers(tiny, tmp_path):
    two = make_dataset(tmp_path / "two", n_series=2, seed=3, size="tiny", workers=2)
    assert two.series_uids == tiny["summary"].series_uids[:2]
    for mhd in two.scan_paths:
        original = tiny["root"] / mhd.relative_to(two.out_dir)
        assert mhd.with_suffix(".raw").read_bytes() == original.with_suffix(".raw").read_bytes()


def test_every_candidate_lies_inside_its_volume_and_some_near_a_border(tiny):
    near_border = 0
    for uid, xyz, _ in tiny["candidates"]:
        hu, origin, spacing, direction = tiny["images"][uid]
        irc = xyz2irc(xyz, origin, spacing, direction)
        assert all(0 <= v < n for v, n in zip(irc, hu.shape)), (uid, xyz, irc, hu.shape)
        near_border += any(v < 3 or v >= n - 3 for v, n in zip(irc, hu.shape))
    assert near_border >= 1


def test_positives_match_an_annotation_within_a_quarter_diameter(tiny):
    by_uid: dict[str, list] = {}
    for uid, xyz, diameter in tiny["annotations"]:
        by_uid.setdefault(uid, []).append((np.array(xyz), diameter))

    def matches(uid, xyz):
        return [d for c, d in by_uid.get(uid, []) if np.all(np.abs(np.array(xyz) - c) < d / 4)]

    positives = [(u, x) for u, x, label in tiny["candidates"] if label == 1]
    negatives = [(u, x) for u, x, label in tiny["candidates"] if label == 0]
    assert positives and all(matches(u, x) for u, x in positives)
    assert not any(matches(u, x) for u, x in negatives)
    # Every nodule has at least one positive candidate.
    for uid, xyz, diameter in tiny["annotations"]:
        assert any(u == uid and np.all(np.abs(np.array(x) - xyz) < diameter / 4) for u, x in positives)


def test_nodules_are_in_the_image_where_the_world_coordinates_say(tiny):
    """Reading HU at an annotation through the direction matrix finds the nodule; ignoring
    the direction of a flipped scan lands elsewhere (scan index 1 is always flipped)."""
    flipped = 0
    for uid, xyz, diameter in tiny["annotations"]:
        hu, origin, spacing, direction = tiny["images"][uid]
        lung_median = np.median(hu[(hu > -950) & (hu < -600)])
        assert hu[xyz2irc(xyz, origin, spacing, direction)] > lung_median + 100, (uid, xyz, diameter)
        if direction != (1, 0, 0, 0, 1, 0, 0, 0, 1):
            naive = xyz2irc_float(xyz, origin, spacing, np.eye(3))
            assert np.any(naive < -0.5) or np.any(naive > np.array(hu.shape) - 0.5)
            flipped += 1
    assert tiny["images"][tiny["summary"].series_uids[1]][3] != (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert flipped >= 1


def test_tiny_counts_are_what_other_tests_expect(tiny):
    summary = tiny["summary"]
    per_scan = summary.n_negative / len(summary.series_uids)
    assert 1 <= summary.n_annotations / len(summary.series_uids) <= 3
    assert 15 <= per_scan <= 50
    assert 6 <= summary.negatives_per_positive <= 20
    for hu, *_ in tiny["images"].values():
        assert hu.dtype == np.int16 and 36 <= hu.shape[0] <= 44 and 50 <= hu.shape[1] <= 68


@pytest.fixture(scope="module")
def small_scan():
    return generate_scan(seed=0, index=0, size="small")


def test_small_scan_geometry_and_voxel_statistics_are_plausible(small_scan):
    scan = small_scan
    hu, lung = scan.hu.astype(np.float32), scan.lung_mask
    assert 80 <= hu.shape[0] <= 140 and 160 <= hu.shape[2] <= 224
    assert 1.2 <= scan.spacing_xyz[0] <= 1.6 and 1.25 <= scan.spacing_xyz[2] <= 2.5
    assert -200 < scan.origin_xyz[0] < -100 and -360 < scan.origin_xyz[2] < -40
    assert 0.03 < lung.mean() < 0.4
    assert -870 <= hu[lung].mean() <= -700
    assert 20 <= np.median(np.abs(hu[lung] - np.median(hu[lung]))) <= 150   # textured, not flat
    body = (hu > -300) & ~lung
    assert 0.15 < body.mean() < 0.7
    assert -150 < np.median(hu[body]) < 120                                  # fat and soft tissue
    assert np.percentile(hu, 99.9) > 300                                     # ribs and spine
    assert hu.min() <= -950                                                  # air outside the body
    assert np.percentile(hu, 1) >= -3024


def test_small_scan_has_many_hard_negatives(small_scan):
    kinds = Counter(c.kind for c in small_scan.candidates if c.label == 0)
    positives = sum(c.label for c in small_scan.candidates)
    assert 4 <= len(small_scan.nodules) <= 8 and positives >= len(small_scan.nodules)
    assert 100 <= sum(kinds.values()) / positives <= 250
    hard = sum(kinds[k] for k in ("vessel", "bifurcation", "pleura", "rib", "mediastinum"))
    assert hard / sum(kinds.values()) > 0.6
    assert kinds["border"] > 0 and kinds["parenchyma"] > 0


def test_small_nodules_are_brighter_than_the_lung_around_them(small_scan):
    scan = small_scan
    lung_median = np.median(scan.hu[scan.lung_mask])
    for nodule in scan.nodules:
        irc = xyz2irc(nodule.center_xyz, scan.origin_xyz, scan.spacing_xyz, scan.direction)
        assert scan.hu[irc] > lung_median + 150, nodule


def test_existing_non_empty_output_is_refused_and_kept(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        make_dataset(out, n_series=1, size="tiny")
    with pytest.raises(UsageError, match="does not look like"):
        make_dataset(out, n_series=1, size="tiny", overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_a_previous_data_set(tmp_path):
    first = make_dataset(tmp_path / "data", n_series=2, seed=1, size="tiny")
    second = make_dataset(tmp_path / "data", n_series=1, seed=2, size="tiny", overwrite=True)
    assert not first.scan_paths[0].exists() and second.scan_paths[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_failed_run_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing_write(image, path, useCompression=False):   # noqa: N803 (SimpleITK's name)
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(image, path, useCompression=useCompression)

    original = sitk.WriteImage
    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    with pytest.raises(OSError, match="disk full"):
        make_dataset(tmp_path / "data", n_series=3, size="tiny")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_raise_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="size"):
        make_dataset(tmp_path / "a", size="huge")
    with pytest.raises(UsageError, match="nodules per scan"):
        make_dataset(tmp_path / "a", size="tiny", nodules_per_scan=(3, 1))
    assert list(tmp_path.iterdir()) == []


def test_errors_by_kind_script_reads_a_results_file(tiny, tmp_path):
    # tools/errors_by_kind.py regenerates the scans: a results file that scores every
    # candidate by its label must find every nodule and separate every negative kind.
    preds = tmp_path / "preds.csv"
    with open(preds, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "probability"])
        for uid, xyz, label in tiny["candidates"]:
            writer.writerow([uid, *xyz, 0.9 if label else 0.1])
    script = Path(__file__).resolve().parents[2] / "tools" / "errors_by_kind.py"
    done = subprocess.run([sys.executable, str(script), str(preds), "--series", "5", "--seed", "3",
                           "--size", "tiny"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "overall ROC AUC 1.000" in lines[0]
    nodule_lines = [line for line in lines if line.startswith("nodule")]
    other_lines = [line for line in lines[2:] if not line.startswith("nodule")]
    assert nodule_lines and all("1.00 found" in line for line in nodule_lines)
    assert other_lines and all(line.endswith("AUC 1.000") for line in other_lines)
    # --list-below lists the nodules under the bar, each with no negative above it here.
    listed = subprocess.run([sys.executable, str(script), str(preds), "--series", "5", "--seed", "3", "--size", "tiny",
                             "--list-below", "0.95"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if " mm  p " in line]
    assert len(rows) == len(tiny["annotations"])
    assert all("p 0.900" in row and "0.0 FP/scan" in row for row in rows)
    none = subprocess.run([sys.executable, str(script), str(preds), "--series", "5", "--seed", "3", "--size", "tiny",
                           "--list-below", "0.5"], capture_output=True, text=True, timeout=120)
    assert none.returncode == 0 and " mm  p " not in none.stdout
    wrong_seed = subprocess.run([sys.executable, str(script), str(preds), "--seed", "4", "--size", "tiny",
                                 "--series", "5"], capture_output=True, text=True, timeout=120)
    assert wrong_seed.returncode == 1 and "not in the data set" in wrong_seed.stderr
    for bad in (tmp_path / "missing.csv", tiny["root"] / "annotations.csv"):
        done = subprocess.run([sys.executable, str(script), str(bad)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and str(bad) in done.stderr


def test_the_data_set_gets_the_usual_modes_not_the_temp_dirs_private_one(tmp_path):
    # mkdtemp makes its folder 0700: a data set renamed from it would hide its scans from other
    # users, who would then read "no .mhd scans found".
    old = os.umask(0o022)
    try:
        summary = make_dataset(tmp_path / "data", n_series=1, size="tiny")
    finally:
        os.umask(old)
    root = summary.out_dir
    folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {oct(0o755)}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o644)}


def test_errors_by_kind_lists_the_nodules_detection_missed(tiny, tmp_path):
    # Findings of `luna detect` match no generated candidate: with --detections, a nodule is found
    # when a finding lies inside its radius. Here every nodule but the first has one.
    with open(tiny["root"] / "annotations.csv", newline="") as handle:
        nodules = list(csv.DictReader(handle))
    preds = tmp_path / "findings.csv"
    with open(preds, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "probability"])
        for n, row in enumerate(nodules):
            x, y, z = (float(row[k]) + (0.0 if n else 50.0) for k in ("coordX", "coordY", "coordZ"))
            writer.writerow([row["seriesuid"], x, y, z, 0.9])
    script = Path(__file__).resolve().parents[2] / "tools" / "errors_by_kind.py"
    done = subprocess.run([sys.executable, str(script), str(preds), "--series", "5", "--seed", "3", "--size", "tiny",
                           "--detections"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{len(nodules) - 1} inside a nodule" in done.stdout
    (missed,) = [line for line in done.stdout.splitlines() if " mm  p " in line]
    assert "p nan" in missed and nodules[0]["seriesuid"] in missed

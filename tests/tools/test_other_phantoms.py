"""tools/other_phantoms.py: a second generator's LUNA16-format data set, read back through luna's reader."""
from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from luna.io.ct import Ct
from luna.io.scans import find_series_files
from luna.luna16.candidates import load_candidates
from luna.luna16.csvfiles import read_annotations

TOOL = Path(__file__).resolve().parents[2] / "tools" / "other_phantoms.py"
KINDS = {"solid", "spiculated", "ground_glass", "part_solid", "calcified", "juxta_pleural", "juxta_vascular"}


def generate(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), str(out), "--size", "tiny", "--workers", "1", *flags],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def data_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("other") / "set"
    done = generate(out, "--series", "2", "--seed", "3")
    assert done.returncode == 0, done.stderr
    return out


def test_scans_read_back_with_the_nodules_dense_and_marked_by_candidates(data_set):
    files = find_series_files(data_set)
    assert len(files) == 2 and all(uid.startswith("2.25.") for uid in files)
    nodules = read_annotations(data_set / "annotations.csv")  # {uid: rows of x, y, z, diameter_mm}
    candidates = load_candidates(data_set / "candidates.csv", data_set / "annotations.csv", None)
    assert sum(len(n) for n in nodules.values()) >= 4 and len(candidates) > 100 * len(files)
    for uid, path in files.items():
        ct = Ct(path, uid)
        centre_hu = []
        for *centre_xyz, diameter_mm in nodules[uid]:
            # Every nodule has a class-1 candidate inside its radius, as LUNA16's candidates do.
            assert any(c.series_uid == uid and c.is_nodule and
                       np.linalg.norm(np.subtract(c.center_xyz, centre_xyz)) < diameter_mm / 2 for c in candidates)
            centre_hu.append(float(ct.hu_a[ct.xyz2irc(centre_xyz)]))
        # Nodules (solid or ground glass) are denser than aerated lung (about -860 HU) at their centre.
        assert np.median(centre_hu) > -700, centre_hu
    # The analysis files describe what was drawn: every annotated nodule, with its kind.
    with (data_set / "phantom_nodules.csv").open() as handle:
        described = [row for row in csv.DictReader(handle) if row["kind"] != "excluded"]
    assert len(described) == sum(len(n) for n in nodules.values())
    assert {row["kind"] for row in described} <= set(KINDS)
    with (data_set / "phantom_scans.csv").open() as handle:
        assert sorted(row["seriesuid"] for row in csv.DictReader(handle)) == sorted(files)
    # Class 1 is given only inside a nodule's radius.
    for candidate in (c for c in candidates if c.is_nodule):
        assert any(np.linalg.norm(np.subtract(candidate.center_xyz, row[:3])) < row[3] / 2
                   for row in nodules[candidate.series_uid])


def test_the_same_seed_draws_the_same_files_and_an_existing_folder_is_refused(data_set, tmp_path):
    again = tmp_path / "again"
    assert generate(again, "--series", "1", "--seed", "3").returncode == 0
    (uid, path), = find_series_files(again).items()
    assert path.with_suffix(".raw").read_bytes() == find_series_files(data_set)[uid].with_suffix(".raw").read_bytes()
    refused = generate(again, "--series", "1")
    assert refused.returncode == 1
    message = f"other_phantoms.py: error: {again}: already exists; choose a new folder"
    assert refused.stderr.strip().splitlines() == [message]


def test_other_misses_counts_each_kind_found_when_ranked_first_and_not_when_ranked_last(data_set, tmp_path):
    tool = TOOL.with_name("other_misses.py")
    with (data_set / "candidates.csv").open() as handle:
        candidates = list(csv.DictReader(handle))
    # Scored first, every nodule's candidates come before any other: within the top (class-1 count).
    top = max(Counter(c["seriesuid"] for c in candidates if c["class"] == "1").values())
    tables = {}
    for name, nodule_p in (("first", "0.9"), ("last", "0.0")):
        path = tmp_path / f"{name}.csv"
        with path.open("w") as handle:
            handle.write("seriesuid,coordX,coordY,coordZ,probability\n")
            for c in candidates:
                p = nodule_p if c["class"] == "1" else "0.1"
                handle.write(f"{c['seriesuid']},{c['coordX']},{c['coordY']},{c['coordZ']},{p}\n")
        done = subprocess.run([sys.executable, str(tool), str(data_set), str(path), "--top", str(top)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        tables[name] = {cells[0]: cells[1:] for cells in
                        ([c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()[2:])}
    assert tables["first"] and tables["first"].keys() == tables["last"].keys()
    for group, (count, ranked, high) in tables["first"].items():
        assert ranked == high == count, group
    for group, (count, ranked, high) in tables["last"].items():
        assert ranked == high == "0", group


def test_other_misses_names_the_file_and_line_of_a_bad_nodule_row(tmp_path):
    (tmp_path / "phantom_nodules.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm,kind\n"
                                                  "1.2,0,0,0,5,solid\n1.2,0,0,zero,5,solid\n")
    results = tmp_path / "results.csv"
    results.write_text("seriesuid,coordX,coordY,coordZ,probability\n1.2,0,0,0,0.5\n")
    done = subprocess.run([sys.executable, str(TOOL.with_name("other_misses.py")), str(tmp_path), str(results)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"other_misses.py: error: {tmp_path / 'phantom_nodules.csv'}, line 3:")

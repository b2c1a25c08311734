"""tools/blob_candidates.py: the data dir's candidates, then the blobs, labelled by the hit rule."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

from luna.luna16.csvfiles import read_annotations
from luna.luna16.rules import hits
from luna.synth import make_dataset

TOOL = Path(__file__).resolve().parents[2] / "tools" / "blob_candidates.py"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_given_candidates_come_first_and_blobs_are_labelled_by_the_nodules(tmp_path):
    data = make_dataset(tmp_path / "data", n_series=2, seed=5, size="small", nodules_per_scan=(2, 3)).out_dir
    out = tmp_path / "with_blobs.csv"
    done = run_tool(data, out, "--max-blobs", "60", "--workers", "2")
    assert done.returncode == 0, done.stderr
    given = list(csv.reader(open(data / "candidates.csv")))
    rows = list(csv.reader(open(out)))
    assert rows[0] == given[0]
    head = [[r[0], *(float(v) for v in r[1:4]), r[4]] for r in rows[1:len(given)]]
    assert head == [[r[0], *(float(v) for v in r[1:4]), r[4]] for r in given[1:]]
    blobs = rows[len(given):]
    nodules = read_annotations(data / "annotations.csv")
    inside = 0
    for uid in nodules:
        mine = [r for r in blobs if r[0] == uid]
        assert 0 < len(mine) <= 60
        centers = np.array([[float(v) for v in r[1:4]] for r in mine])
        labels = np.array([r[4] == "1" for r in mine])
        assert (hits(centers, nodules[uid]).any(axis=1) == labels).all()
        inside += int(labels.sum())
    assert inside >= 2, "the detector found no nodule: the labels proved nothing"


def test_an_existing_output_and_a_dir_without_candidates_are_one_line_errors(tmp_path):
    data = make_dataset(tmp_path / "data", n_series=1, seed=3, size="tiny").out_dir
    (tmp_path / "taken.csv").write_text("keep me\n")
    refused = run_tool(data, tmp_path / "taken.csv")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "exists" in refused.stderr
    assert (tmp_path / "taken.csv").read_text() == "keep me\n"
    (data / "candidates.csv").unlink()
    missing = run_tool(data, tmp_path / "new.csv")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "candidates" in missing.stderr
    assert not (tmp_path / "new.csv").exists()


def test_a_negative_count_is_refused_before_anything_is_read(tmp_path):
    refused = run_tool(tmp_path / "no_such_dir", tmp_path / "out.csv", "--workers", "-1")
    assert refused.returncode == 2 and "--workers" in refused.stderr and "must be >= 0" in refused.stderr
    assert not (tmp_path / "out.csv").exists()

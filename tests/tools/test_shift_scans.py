"""tools/shift_scans.py: thick, noisy, offset copies of a data set keep the patients where they were."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from luna.io.ct import Ct
from luna.io.scans import find_series_files
from luna.luna16.csvfiles import read_annotations
from luna.synth import make_dataset

TOOL = Path(__file__).resolve().parents[2] / "tools" / "shift_scans.py"


def shift(src: Path, dst: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), str(src), str(dst), *flags], capture_output=True, text=True,
                          timeout=120)


def test_shifted_scans_are_thick_offset_and_keep_their_nodules_in_place(tmp_path):
    # Seed 7's second scan is stored with every axis reversed: world positions must hold there too.
    src = make_dataset(tmp_path / "src", n_series=2, seed=7, size="small", nodules_per_scan=(2, 3)).out_dir
    done = shift(src, tmp_path / "dst", "--slice-mm", "3.0", "--noise-hu", "0", "--hu-offset", "25")
    assert done.returncode == 0, done.stderr
    before, after = find_series_files(src), find_series_files(tmp_path / "dst")
    assert sorted(before) == sorted(after)
    assert (tmp_path / "dst" / "annotations.csv").read_bytes() == (src / "annotations.csv").read_bytes()
    nodules = read_annotations(src / "annotations.csv")
    checked = 0
    for uid in before:
        thin, thick = Ct(before[uid], uid), Ct(after[uid], uid)
        # The thick scan covers the thin one: its first and last voxel centres are not inside it.
        corners = [thin.irc2xyz(irc) for irc in ((0, 0, 0), tuple(n - 1 for n in thin.hu_a.shape))]
        for corner in corners:
            assert all(0 <= v < n for v, n in zip(thick.xyz2irc(corner), thick.hu_a.shape)), (uid, corner)
        assert abs(sitk.ReadImage(str(after[uid])).GetSpacing()[2] - 3.0) < 1e-6
        assert thick.hu_a.size < thin.hu_a.size
        # The offset shows in air far from anything (the mean over the whole scan moves by it).
        assert 15 < float(thick.hu_a.mean()) - float(thin.hu_a.mean()) < 35
        for x, y, z, diameter_mm in nodules.get(uid, np.zeros((0, 4))):
            if diameter_mm < 8:
                continue  # a small nodule's peak is diluted by the thick slices, as it should be
            centre = thick.hu_a[tuple(int(v) for v in thick.xyz2irc((x, y, z)))]
            assert centre > -500, f"{uid}: no dense tissue at a {diameter_mm:.1f} mm nodule's centre ({centre} HU)"
            checked += 1
    assert checked >= 1, "no nodule of 8 mm or more: the position check proved nothing"


def test_same_flags_same_files_and_an_existing_output_is_refused(tmp_path):
    src = make_dataset(tmp_path / "src", n_series=1, seed=3, size="tiny").out_dir
    for name in ("a", "b"):
        assert shift(src, tmp_path / name, "--seed", "4").returncode == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    refused = shift(src, tmp_path / "a")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "exists" in refused.stderr

"""tools/heldout.py: makes the held-out sets it lacks, scores a run on each, prints the table row."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from luna.cli.train import LunaTrainingApp
from luna.io.scans import find_series_files
from tests.conftest import make_tiny_luna, train_argv

TOOL = Path(__file__).resolve().parents[2] / "tools" / "heldout.py"


def heldout(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=600)


def test_makes_the_missing_sets_scores_the_run_and_prints_the_row(tmp_path):
    data = make_tiny_luna(tmp_path / "tiny", n_series=2)
    LunaTrainingApp(train_argv(data["root"], tmp_path, "--epochs", "1", "--epoch-size", "8")).main()
    (run_dir,) = [p for p in (tmp_path / "runs" / "luna").iterdir() if (p / "run.json").exists()]
    root = tmp_path / "sets"
    done = heldout(str(run_dir), "--sets", "h8", "shift", "--series", "1", "--data-root", str(root))
    assert done.returncode == 0, done.stderr
    # shift is h8 seen by another scanner: h8 was made first, then shifted; the same patient.
    assert sorted(find_series_files(root / "h8")) == sorted(find_series_files(root / "h8_shift"))
    header, rule, cpm, interval = done.stdout.strip().splitlines()
    assert header == "|  | h8 | shift |" and rule == "|---|---|---|"
    for name, cell in zip(("h8", "h8_shift"), cpm.split(" | ")[1:]):
        froc = json.loads((run_dir / "heldout" / f"eval_{name}" / "metrics.json").read_text())["froc"]
        assert cell.strip(" |") == f"{froc['cpm']:.3f}"
        assert (run_dir / "heldout" / f"{name}.csv").stat().st_size > 0
    assert interval.startswith("| 95% interval | [")
    # A second call makes nothing: the sets are on disk.
    again = heldout(str(run_dir), "--sets", "h8", "--series", "1", "--data-root", str(root))
    assert again.returncode == 0 and "making" not in again.stderr


def test_a_failing_step_stops_with_its_own_one_line_error(tmp_path):
    root = tmp_path / "sets"
    (root / "h8").mkdir(parents=True)
    (root / "h8" / "candidates.csv").write_text("seriesuid,coordX,coordY,coordZ,class\n")
    done = heldout(str(tmp_path / "no_such_run"), "--sets", "h8", "--data-root", str(root))
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("heldout.py: error: ") and "no_such_run" in line

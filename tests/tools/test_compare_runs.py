"""tools/compare_runs.py: two groups of scored runs, their means, difference and its standard error."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))

from heldout import SETS, SEVEN, eval_dir  # noqa: E402


def compare_runs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / "compare_runs.py"), *args],
                          capture_output=True, text=True, timeout=120)


def scored_run(path: Path, cpm: dict[str, float]) -> Path:
    """A run directory holding the evaluations tools/heldout.py writes, with these CPMs."""
    for name, value in cpm.items():
        evaluation = eval_dir(path / "heldout", SETS[name][0])
        evaluation.mkdir(parents=True)
        (evaluation / "metrics.json").write_text(json.dumps({"froc": {"cpm": value, "cpm_ci": [0, 1]}}))
    return path


def rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.strip().splitlines()[2:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_means_difference_and_pooled_standard_error(tmp_path):
    # Baseline: every set at 0.70 / 0.80 (spread 0.1); candidate: 0.90 / 1.00 on varied only.
    base = [scored_run(tmp_path / f"b{i}", {n: 0.7 + 0.1 * i for n in [*SEVEN, "anat"]}) for i in range(2)]
    cand = [scored_run(tmp_path / f"c{i}", {**{n: 0.7 + 0.1 * i for n in SEVEN}, "varied": 0.9 + 0.1 * i})
            for i in range(2)]
    done = compare_runs("--baseline", *map(str, base), "--candidate", *map(str, cand))
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    # anat was scored for the baseline only: no row; the mean of the seven is there.
    assert list(table) == [*SEVEN, "mean of 7"]
    # Pooled sd: sqrt((0.005 + 0.005) / 2) = 0.0707; standard error sqrt(0.005 * (1/2 + 1/2)) = 0.0707.
    se = math.sqrt(0.005)
    assert table["full"] == ["0.750", "0.750", "+0.000", f"{se:.3f}"]
    assert table["varied"] == ["0.750", "0.950", "+0.200 *", f"{se:.3f}"]
    assert table["mean of 7"][2] == f"{0.2 / 7:+.3f}"  # under two standard errors: no mark


def test_one_run_a_side_has_no_standard_error(tmp_path):
    base = scored_run(tmp_path / "b", {"full": 0.8})
    cand = scored_run(tmp_path / "c", {"full": 0.9})
    done = compare_runs("--baseline", str(base), "--candidate", str(cand))
    assert done.returncode == 0, done.stderr
    assert rows(done.stdout) == {"full": ["0.800", "0.900", "+0.100", ""]}


def test_a_run_without_scores_is_a_one_line_error(tmp_path):
    cand = scored_run(tmp_path / "c", {"full": 0.9})
    (tmp_path / "unscored").mkdir()
    for missing, says in ((tmp_path / "unscored", "run tools/heldout.py"), (tmp_path / "absent", "no such run")):
        done = compare_runs("--baseline", str(missing), "--candidate", str(cand))
        assert done.returncode == 1 and done.stdout == ""
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("compare_runs.py: error: ") and str(missing) in line and says in line

"""Non-maximum suppression: hand-built cases, properties on random candidates, and the ensemble script."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from luna.luna16.csvfiles import read_predictions
from luna.eval.suppression import SUPPRESSED_SCALE, suppress_neighbours, suppressed_mask


def on_x_axis(*x_mm: float) -> np.ndarray:
    return np.array([[x, 0.0, 0.0] for x in x_mm])


def test_the_weaker_of_two_close_candidates_is_suppressed():
    got = suppress_neighbours(on_x_axis(0, 6), np.array([0.6, 0.9]), radius_mm=10)
    np.testing.assert_allclose(got, [0.6 * SUPPRESSED_SCALE, 0.9])


def test_candidates_at_or_beyond_the_radius_are_left_alone():
    probabilities = np.array([0.9, 0.8, 0.7])
    np.testing.assert_array_equal(suppress_neighbours(on_x_axis(0, 10, 25), probabilities, 10), probabilities)


def test_a_suppressed_candidate_suppresses_nothing():
    # B lies within reach of A and of C, but A and C are 12 mm apart: A suppresses B, and B, not
    # being a detection, leaves C alone.
    mask = suppressed_mask(on_x_axis(0, 6, 12), np.array([0.9, 0.8, 0.7]), 10)
    assert mask.tolist() == [False, True, False]


def test_ties_go_to_the_earlier_row():
    assert suppressed_mask(on_x_axis(0, 1), np.array([0.5, 0.5]), 10).tolist() == [False, True]


def test_scans_do_not_suppress_each_other():
    centers = on_x_axis(0, 1)
    probabilities = np.array([0.9, 0.8])
    np.testing.assert_array_equal(suppress_neighbours(centers, probabilities, 10, ["1.2.3", "1.2.4"]),
                                  probabilities)
    assert suppress_neighbours(centers, probabilities, 10, ["1.2.3", "1.2.3"])[1] == pytest.approx(0.08)


def test_radius_zero_and_tiny_inputs_change_nothing():
    probabilities = np.array([0.2, 0.3])
    np.testing.assert_array_equal(suppress_neighbours(on_x_axis(0, 0), probabilities, 0), probabilities)
    assert suppressed_mask(np.zeros((0, 3)), np.zeros(0), 10).shape == (0,)
    assert suppressed_mask(on_x_axis(0), np.array([0.4]), 10).tolist() == [False]


@pytest.mark.parametrize("seed", range(5))
def test_properties_on_random_scans(seed):
    rng = np.random.default_rng(seed)
    n = 300
    centers = rng.uniform(0, 120, (n, 3))
    probabilities = rng.random(n)
    uids = rng.choice(["1.2.3", "1.2.4", "1.2.5"], n)
    got = suppress_neighbours(centers, probabilities, 10, uids)
    suppressed = got < probabilities
    np.testing.assert_allclose(got[suppressed], probabilities[suppressed] * SUPPRESSED_SCALE)
    kept = ~suppressed
    for uid in np.unique(uids):
        scan = uids == uid
        distance = np.linalg.norm(centers[:, None] - centers[None], axis=2)
        # Kept candidates of one scan are pairwise at least the radius apart ...
        pairs = distance[np.ix_(scan & kept, scan & kept)]
        assert (pairs[~np.eye(len(pairs), dtype=bool)] >= 10).all()
        # ... and each suppressed one has a kept, higher-scoring neighbour within it.
        for i in np.flatnonzero(scan & suppressed):
            near = scan & kept & (distance[i] < 10)
            assert (probabilities[near] > probabilities[i]).any()
    # A monotone rescaling of the scores suppresses the same candidates.
    np.testing.assert_array_equal(suppress_neighbours(centers, probabilities ** 3, 10, uids) < probabilities ** 3,
                                  suppressed)


SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "average_predictions.py"


def write_results(path: Path, rows: list[tuple[str, float, float, float, float]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "probability"])
        writer.writerows(rows)
    return path


def test_average_predictions_script_means_logits_then_suppresses(tmp_path):
    a = write_results(tmp_path / "a.csv", [("1.2.3", 0.0, 0.0, 0.0, 0.9), ("1.2.3", 5.0, 0.0, 0.0, 0.5),
                                           ("1.2.4", 0.0, 0.0, 0.0, 0.2)])
    # Same candidates, another row order.
    b = write_results(tmp_path / "b.csv", [("1.2.4", 0.0, 0.0, 0.0, 0.2), ("1.2.3", 5.0, 0.0, 0.0, 0.5),
                                           ("1.2.3", 0.0, 0.0, 0.0, 0.5)])
    logit = np.log(0.9 / 0.1) / 2   # mean of logit(0.9) and logit(0.5) = 0
    for nms, second in (("0", 0.5), ("10", 0.5 * SUPPRESSED_SCALE)):
        out = tmp_path / f"mean{nms}.csv"
        done = subprocess.run([sys.executable, str(SCRIPT), str(out), str(a), str(b), "--nms-mm", nms],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        got = read_predictions(out)
        assert got.series_uids.tolist() == ["1.2.3", "1.2.3", "1.2.4"]
        np.testing.assert_allclose(got.probabilities, [1 / (1 + np.exp(-logit)), second, 0.2], rtol=1e-5)


def test_average_predictions_script_bad_input_is_one_line(tmp_path):
    a = write_results(tmp_path / "a.csv", [("1.2.3", 0.0, 0.0, 0.0, 0.9)])
    other = write_results(tmp_path / "other.csv", [("1.2.3", 1.0, 0.0, 0.0, 0.9)])
    for bad, word in ((other, "does not hold the same candidates"), (tmp_path / "missing.csv", "missing.csv")):
        out = tmp_path / "out.csv"
        done = subprocess.run([sys.executable, str(SCRIPT), str(out), str(a), str(bad)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and word in done.stderr, done.stderr
        assert not out.exists()

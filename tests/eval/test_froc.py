"""LUNA16 scoring rules on hand-built cases whose FROC and CPM are worked out by hand."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luna.errors import DataError
from luna.eval.froc import bootstrap_froc, compute_froc, froc_from_matches, match_candidates
from luna.luna16.rules import FP_RATES, inside_findings
from luna.luna16.csvfiles import read_annotations, read_predictions, read_series_list

FAR = (500.0, 500.0, 500.0)  # hits nothing


def score(candidates, annotations, excluded=None, series_list=None, **kwargs):
    """compute_froc from a list of (uid, (x, y, z), probability)."""
    uids = [uid for uid, _, _ in candidates]
    centers = np.array([xyz for _, xyz, _ in candidates], dtype=float).reshape(-1, 3)
    probs = np.array([p for _, _, p in candidates], dtype=float)
    return compute_froc(uids, centers, probs, annotations, excluded, series_list, **kwargs)


def nodule(x, y, z, diameter_mm=10.0):
    return [x, y, z, diameter_mm]


def findings(**by_uid):
    return {uid: np.array(rows, dtype=float).reshape(-1, 4) for uid, rows in by_uid.items()}


# --- hand-built FROC cases --------------------------------------------------------------------

def test_perfect_model_scores_cpm_one():
    ann = findings(a=[nodule(0, 0, 0), nodule(40, 0, 0)], b=[nodule(0, 0, 0, 6)], c=[])
    cands = [("a", (1, 1, 1), 0.9), ("a", (40, 0, 2), 0.8), ("b", (0, 1, 0), 0.95),
             ("a", FAR, 0.2), ("b", FAR, 0.1), ("c", FAR, 0.3)]
    result = score(cands, ann)
    assert result.cpm == 1.0
    assert result.n_scans == 3 and result.n_nodules == 3 and result.n_found == 3
    assert result.n_false_positives == 3
    assert all(s == 1.0 for s in result.sensitivity_at.values())


def test_perfect_model_cpm_equals_fraction_of_nodules_with_a_candidate():
    ann = findings(a=[nodule(0, 0, 0), nodule(40, 0, 0)], b=[nodule(0, 0, 0), nodule(0, 50, 0)])
    cands = [("a", (0, 0, 0), 0.9), ("a", (40, 0, 0), 0.8), ("b", (0, 0, 0), 0.7), ("b", FAR, 0.1)]
    result = score(cands, ann)  # b's second nodule has no candidate
    assert result.n_found == 3
    assert result.cpm == pytest.approx(0.75)
    assert result.sensitivity[-1] == pytest.approx(0.75)


def test_false_positives_ranked_above_nodules_give_the_hand_computed_cpm():
    # 2 scans, 2 FP/scan ranked above both nodules: 2 FP/scan before any hit, so only the
    # readings at 2, 4 and 8 FP/scan see the nodules: CPM = 3/7.
    ann = findings(a=[nodule(0, 0, 0)], b=[nodule(0, 0, 0)])
    cands = [("a", (0, 0, 0), 0.1), ("b", (0, 0, 0), 0.2),
             ("a", (100, 0, 0), 0.9), ("a", (200, 0, 0), 0.8), ("b", (100, 0, 0), 0.7), ("b", (200, 0, 0), 0.6)]
    result = score(cands, ann)
    assert [result.sensitivity_at[r] for r in FP_RATES] == [0, 0, 0, 0, 1, 1, 1]
    assert result.cpm == pytest.approx(3 / 7)
    np.testing.assert_allclose(result.fps_per_scan, [0.5, 1, 1.5, 2, 2, 2])
    np.testing.assert_allclose(result.sensitivity, [0, 0, 0, 0, 0.5, 1])


def test_interleaved_ranking_step_reading():
    # FP .9, nodule .8, FP .7, FP .6, nodule .5 over 2 scans -> points (fps, sens):
    # (.5, 0) (.5, .5) (1, .5) (1.5, .5) (1.5, 1); readings 0, 0, .5, .5, 1, 1, 1.
    ann = findings(a=[nodule(0, 0, 0)], b=[nodule(0, 0, 0)])
    cands = [("a", FAR, 0.9), ("a", (0, 0, 0), 0.8), ("b", FAR, 0.7), ("a", (100, 0, 0), 0.6),
             ("b", (0, 0, 0), 0.5)]
    result = score(cands, ann)
    assert [result.sensitivity_at[r] for r in FP_RATES] == [0, 0, 0.5, 0.5, 1, 1, 1]
    assert result.cpm == pytest.approx(4 / 7)
    np.testing.assert_allclose(result.thresholds, [0.9, 0.8, 0.7, 0.6, 0.5])


def test_ties_between_a_nodule_and_a_false_positive_share_one_point():
    ann = findings(a=[nodule(0, 0, 0)])
    result = score([("a", (0, 0, 0), 0.5), ("a", FAR, 0.5)], ann)
    np.testing.assert_allclose(result.fps_per_scan, [1.0])
    np.testing.assert_allclose(result.sensitivity, [1.0])
    assert result.sensitivity_at[0.5] == 0 and result.sensitivity_at[1.0] == 1


def test_duplicate_hits_count_once_with_the_highest_probability_and_are_not_false_positives():
    ann = findings(a=[nodule(0, 0, 0, 20)])
    single = score([("a", (0, 0, 0), 0.9)], ann)
    triple = score([("a", (0, 0, 0), 0.3), ("a", (2, 0, 0), 0.9), ("a", (0, 3, 0), 0.8)], ann)
    assert triple.n_found == 1 and triple.n_false_positives == 0
    np.testing.assert_array_equal(triple.thresholds, [0.9])
    np.testing.assert_array_equal(triple.fps_per_scan, single.fps_per_scan)
    assert triple.cpm == single.cpm == 1.0


def test_a_candidate_inside_two_nodules_finds_both():
    ann = findings(a=[nodule(-3, 0, 0), nodule(3, 0, 0)])
    result = score([("a", (0, 0, 0), 0.7)], ann)
    assert result.n_found == 2 and result.n_false_positives == 0


def test_hits_are_strictly_inside_the_radius_and_unknown_diameter_is_10_mm():
    ann = findings(a=[nodule(0, 0, 0, 8.0)], b=[nodule(0, 0, 0, -1.0)])
    on_edge = score([("a", (4.0, 0, 0), 0.9), ("b", (0, 0, 5.0), 0.9)], ann)
    inside = score([("a", (0, 3.99, 0), 0.9), ("b", (0, 0, 4.99), 0.9)], ann)
    assert on_edge.n_found == 0 and on_edge.n_false_positives == 2
    assert inside.n_found == 2 and inside.n_false_positives == 0


def test_candidates_hitting_excluded_findings_are_dropped():
    ann = findings(a=[nodule(0, 0, 0)])
    excl = findings(a=[[50, 0, 0, -1.0], [0, 2, 0, 30.0]])  # the second also covers the nodule
    cands = [("a", (0, 0, 0), 0.4), ("a", (52, 0, 0), 0.9), ("a", FAR, 0.8)]
    with_excl = score(cands, ann, excl)
    without = score(cands, ann)
    assert with_excl.n_false_positives == 1 and without.n_false_positives == 2
    assert with_excl.n_found == without.n_found == 1  # hitting a nodule and an excluded finding: a hit
    matches = match_candidates(*zip(*[(u, c, p) for u, c, p in cands]), ann, excl)
    assert matches.n_excluded == 1
    np.testing.assert_array_equal(np.sort(matches.candidate_probabilities), [0.4, 0.8])


def test_inside_findings_uses_the_hit_rule_scan_by_scan():
    excl = findings(a=[[0, 0, 0, 8.0]], b=[[0, 0, 0, -1.0]])
    uids = ["a", "a", "b", "b", "c"]
    centers = [(0, 3.99, 0), (4.0, 0, 0), (0, 0, 4.99), (0, 0, 5.0), (0, 0, 0)]
    np.testing.assert_array_equal(inside_findings(uids, np.array(centers), excl),
                                  [True, False, True, False, False])
    assert inside_findings([], np.zeros((0, 3)), excl).shape == (0,)


def test_only_the_top_100_candidates_of_a_scan_are_scored():
    ann = findings(a=[nodule(0, 0, 0)])
    false_pos = [("a", (100 + k, 0, 0), 0.5 + k / 1000) for k in range(100)]
    missed = score(false_pos + [("a", (0, 0, 0), 0.1)], ann)
    assert missed.n_found == 0 and missed.n_scored == 100 and missed.n_candidates == 101
    kept = score(false_pos[:99] + [("a", (0, 0, 0), 0.1)], ann)
    assert kept.n_found == 1
    # The cap is per scan: another scan's candidates do not push this one out.
    other = [("b", (100 + k, 0, 0), 0.9) for k in range(150)]
    assert score(false_pos[:99] + [("a", (0, 0, 0), 0.1)] + other, ann).n_found == 1


def test_scans_without_nodules_or_predictions_count_in_the_false_positive_rate():
    ann = findings(a=[nodule(0, 0, 0)])
    cands = [("b", FAR, 0.95), ("a", (0, 0, 0), 0.9)]
    two_scans = score(cands, ann)  # 1 FP over 2 scans = 0.5 FP/scan before the hit
    four_scans = score(cands, ann, series_list=["a", "b", "c", "d"])  # 0.25 FP/scan
    assert two_scans.n_scans == 2 and four_scans.n_scans == 4
    assert two_scans.cpm == pytest.approx(5 / 7)
    assert four_scans.cpm == pytest.approx(6 / 7)


def test_series_list_decides_which_scans_are_scored():
    ann = findings(a=[nodule(0, 0, 0)], b=[nodule(0, 0, 0)], z=[nodule(0, 0, 0)])
    cands = [("a", (0, 0, 0), 0.9), ("x", FAR, 0.99), ("z", (0, 0, 0), 0.9)]
    result = score(cands, ann, series_list=["a", "b"])  # b: a nodule but no predictions
    assert result.n_scans == 2 and result.n_nodules == 2 and result.n_found == 1
    assert result.n_false_positives == 0 and result.n_candidates == 1
    assert result.cpm == pytest.approx(0.5)


def test_no_nodule_gives_nan_sensitivity_not_an_error():
    result = score([("a", FAR, 0.5)], {})
    assert result.n_nodules == 0 and np.isnan(result.cpm)


def test_non_finite_probabilities_are_a_data_error():
    with pytest.raises(DataError, match="NaN or infinite"):
        compute_froc(["a"], np.zeros((1, 3)), np.array([np.nan]), {})


# --- properties --------------------------------------------------------------------------------

@st.composite
def scored_scans(draw, max_scans=4):
    """Small random data sets: nodules, candidates near them (hits, duplicates) or anywhere."""
    n_scans = draw(st.integers(1, max_scans))
    uids, centers, probs, ann = [], [], [], {}
    for s in range(n_scans):
        uid = f"s{s}"
        nods = [nodule(draw(st.integers(-40, 40)), draw(st.integers(-40, 40)), 0, draw(st.sampled_from([-1, 4, 12])))
                for _ in range(draw(st.integers(0, 3)))]
        ann[uid] = np.array(nods, dtype=float).reshape(-1, 4)
        for _ in range(draw(st.integers(0, 12))):
            if nods and draw(st.booleans()):
                x, y, z, _ = nods[draw(st.integers(0, len(nods) - 1))]
                xyz = (x + draw(st.integers(-3, 3)), y, z)
            else:
                xyz = (draw(st.integers(-60, 60)), draw(st.integers(-60, 60)), 0)
            uids.append(uid)
            centers.append(xyz)
            probs.append(draw(st.integers(1, 40)) / 40)  # a coarse grid: ties happen
    return uids, np.array(centers, dtype=float).reshape(-1, 3), np.array(probs), ann


MONOTONE = {"affine": lambda p: 3 * p - 7, "cube": lambda p: p ** 3, "logit": lambda p: np.log(p / (1.01 - p)),
            "exp": lambda p: np.exp(5 * p)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=scored_scans(), how=st.sampled_from(sorted(MONOTONE)), cap=st.sampled_from([3, 100]))
def test_cpm_is_invariant_to_strictly_increasing_rescaling(data, how, cap):
    uids, centers, probs, ann = data
    before = froc_from_matches(match_candidates(uids, centers, probs, ann, max_marks_per_scan=cap))
    after = froc_from_matches(match_candidates(uids, centers, MONOTONE[how](probs), ann, max_marks_per_scan=cap))
    assert after.cpm == before.cpm or (np.isnan(after.cpm) and np.isnan(before.cpm))
    np.testing.assert_array_equal(after.fps_per_scan, before.fps_per_scan)
    np.testing.assert_array_equal(after.sensitivity, before.sensitivity)


@settings(max_examples=60, deadline=None)
@given(data=scored_scans(), scan=st.integers(0, 3), cap=st.sampled_from([3, 100]))
def test_a_false_positive_below_all_others_never_raises_cpm(data, scan, cap):
    uids, centers, probs, ann = data
    uid = f"s{scan % len(ann)}"  # an evaluated scan: a new scan would change the denominator
    low = (probs.min() if len(probs) else 1.0) - 0.01
    before = froc_from_matches(match_candidates(uids, centers, probs, ann, max_marks_per_scan=cap))
    after = froc_from_matches(match_candidates(uids + [uid], np.vstack([centers, FAR]), np.r_[probs, low], ann,
                                               max_marks_per_scan=cap))
    assert after.cpm <= before.cpm or np.isnan(before.cpm)


@settings(max_examples=25, deadline=None)
@given(data=scored_scans(), seed=st.integers(0, 2 ** 31))
def test_bootstrap_interval_contains_the_estimate_and_is_deterministic(data, seed):
    # With at most 4 scans, "every scan once" (the point estimate) is drawn in >= 9% of the
    # resamples, so the 2.5-97.5 percentile interval must contain it.
    uids, centers, probs, ann = data
    matches = match_candidates(uids, centers, probs, ann)
    result = froc_from_matches(matches)
    first = bootstrap_froc(matches, n_bootstraps=300, seed=seed)
    again = bootstrap_froc(matches, n_bootstraps=300, seed=seed)
    np.testing.assert_array_equal(first.cpm, again.cpm)  # nan-aware: no nodule in any resample
    np.testing.assert_array_equal(list(first.sensitivity_at.values()), list(again.sensitivity_at.values()))
    np.testing.assert_array_equal(first.band_lower, again.band_lower)
    if not np.isnan(result.cpm):
        assert first.cpm[0] <= result.cpm <= first.cpm[1]
        for rate in FP_RATES:
            low, high = first.sensitivity_at[rate]
            assert low <= result.sensitivity_at[rate] <= high


# --- realistic size: speed and interval ---------------------------------------------------------

def synthetic_study(n_scans=100, n_candidates=20_000, seed=0):
    """~100 scans, ~20k candidates, nodules found with higher probabilities than the rest."""
    rng = np.random.default_rng(seed)
    ann = {f"s{s}": np.column_stack([rng.uniform(-100, 100, (k, 3)), rng.uniform(4, 25, k)])
           for s, k in enumerate(rng.integers(0, 4, n_scans))}
    uids = [f"s{s}" for s in rng.integers(0, n_scans, n_candidates)]
    centers = rng.uniform(-150, 150, (n_candidates, 3))
    probs = rng.beta(1, 8, n_candidates)
    hit_rows = [(uid, row) for uid, rows in ann.items() for row in rows if rng.random() < 0.9]
    for k, (uid, row) in enumerate(hit_rows):  # overwrite the first rows with hits
        uids[k], centers[k], probs[k] = uid, row[:3] + rng.normal(0, 1, 3), rng.beta(6, 2)
    return uids, centers, probs, ann


def test_compute_cpm_and_bootstrap_on_a_study_sized_input():
    # Speed is measured in benchmarks/bench_froc.py, not here.
    uids, centers, probs, ann = synthetic_study()
    result = compute_froc(uids, centers, probs, ann)
    ci = bootstrap_froc(match_candidates(uids, centers, probs, ann), n_bootstraps=1000, seed=0)
    assert 0.5 < result.cpm < 1.0
    assert ci.cpm[0] < result.cpm < ci.cpm[1]


def test_bootstrap_seeds_differ_and_band_brackets_the_curve():
    uids, centers, probs, ann = synthetic_study(n_scans=40, n_candidates=3000)
    matches = match_candidates(uids, centers, probs, ann)
    a, b = bootstrap_froc(matches, 200, seed=1), bootstrap_froc(matches, 200, seed=2)
    assert a.cpm != b.cpm
    assert np.all(a.band_lower <= a.band_upper)
    result = froc_from_matches(matches, n_bootstraps=200, seed=1)
    assert result.ci.cpm == a.cpm


# --- readers ---------------------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


PRED_HEADER = "seriesuid,coordX,coordY,coordZ,probability\n"


def test_read_predictions_and_annotations(tmp_path):
    preds = read_predictions(write(tmp_path / "p.csv", PRED_HEADER + "a,1,2,3,0.5\n\nb,-1.5,0,2e1,1\n"))
    assert preds.series_uids.tolist() == ["a", "b"]
    np.testing.assert_array_equal(preds.centers_xyz, [[1, 2, 3], [-1.5, 0, 20]])
    np.testing.assert_array_equal(preds.probabilities, [0.5, 1])
    ann = read_annotations(write(tmp_path / "a.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm,extra\n"
                                                     "a,1,2,3,5.5,x\nb,0,0,0,-1,y\na,4,5,6,7,z\n"))
    assert sorted(ann) == ["a", "b"]
    np.testing.assert_array_equal(ann["a"], [[1, 2, 3, 5.5], [4, 5, 6, 7]])
    assert read_annotations(write(tmp_path / "empty.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm\n")) == {}


@pytest.mark.parametrize("text, message", [
    ("", r"p\.csv: empty predictions file"),
    (PRED_HEADER, r"p\.csv: no predictions"),
    ("seriesuid,coordX,coordY,coordZ\na,1,2,3\n", r"p\.csv:1: missing column 'probability'"),
    (PRED_HEADER + "a,1,2,3,0.5\na,1,x2,3,0.5\n", r"p\.csv:3: coordY is not a number: 'x2'"),
    (PRED_HEADER + "a,1,2,3,0.5\n\na,1,2,3,nan\n", r"p\.csv:4: probability is nan"),
    (PRED_HEADER + "a,1,2,3\n", r"p\.csv:2: 4 fields, the header has 5"),
    (PRED_HEADER + ",1,2,3,0.5\n", r"p\.csv:2: seriesuid is empty"),
])
def test_bad_predictions_raise_one_line_data_errors(tmp_path, text, message):
    with pytest.raises(DataError, match=message) as info:
        read_predictions(write(tmp_path / "p.csv", text))
    assert "\n" not in str(info.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="annotations file .*nope.csv does not exist"):
        read_annotations(tmp_path / "nope.csv")


def test_read_series_list_plain_or_csv(tmp_path):
    assert read_series_list(write(tmp_path / "s.txt", "a\n\nb\na\n")) == ["a", "b"]
    assert read_series_list(write(tmp_path / "s.csv", "n,seriesuid\n1,a\n2,c\n")) == ["a", "c"]
    with pytest.raises(DataError, match="empty"):
        read_series_list(write(tmp_path / "e.txt", "\n"))


def test_vectorised_bootstrap_equals_scoring_each_resample_as_its_own_study():
    # Same draws as bootstrap_froc (one chunk), but each resample rebuilt as a data set where a
    # scan drawn k times appears k times under new names, then scored from scratch.
    uids, centers, probs, ann = synthetic_study(n_scans=12, n_candidates=600, seed=3)
    scans = sorted(ann)
    n_boot, seed = 40, 7
    draws = np.random.default_rng(seed).integers(0, len(scans), size=(n_boot, len(scans)))
    uids = np.array(uids)
    cpms = []
    for row in draws:
        r_uids, r_centers, r_probs, r_ann = [], [], [], {}
        for copy, s in enumerate(row):
            name = f"{scans[s]}#{copy}"
            mine = uids == scans[s]
            r_uids += [name] * int(mine.sum())
            r_centers.append(centers[mine])
            r_probs.append(probs[mine])
            r_ann[name] = ann[scans[s]]
        cpms.append(compute_froc(r_uids, np.vstack(r_centers), np.concatenate(r_probs), r_ann).cpm)
    expected = np.nanpercentile(cpms, [2.5, 97.5])
    ci = bootstrap_froc(match_candidates(uids, centers, probs, ann), n_bootstraps=n_boot, seed=seed)
    np.testing.assert_allclose(ci.cpm, expected, rtol=1e-12)

"""Tests for luna.luna16.candidates (and luna.data.candidates, which finds the files)."""
import pytest

from luna.data.candidates import get_candidate_info_list
from luna.errors import DataError
from luna.io.scans import find_series_files
from luna.luna16.candidates import CandidateInfo, assign_folds, match_diameter, split_candidates
from luna.luna16.csvfiles import CANDIDATE_COLUMNS
from luna.luna16.geometry import XyzTuple
from tests.conftest import write_csv

HEADER = list(CANDIDATE_COLUMNS)


def test_diameter_matching_uses_a_quarter_of_the_diameter_per_axis():
    annotations = [(0.0, 0.0, 0.0, 8.0), (50.0, 50.0, 50.0, 20.0)]
    assert match_diameter((2.0, -2.0, 1.9), annotations) == 8.0     # |d| <= 8/4 on every axis
    assert match_diameter((2.1, 0.0, 0.0), annotations) == 0.0      # one axis beyond a quarter
    assert match_diameter((54.9, 45.1, 50.0), annotations) == 20.0
    assert match_diameter((0.0, 0.0, 0.0), []) == 0.0


def test_candidate_list_sorted_nodules_first_largest_first(tiny_luna):
    infos = get_candidate_info_list(tiny_luna["root"])
    assert len(infos) == len(tiny_luna["candidates"])
    assert all(isinstance(i, CandidateInfo) for i in infos)
    n_pos = sum(i.is_nodule for i in infos)
    assert n_pos == 2 * len(tiny_luna["uids"])
    assert all(i.is_nodule for i in infos[:n_pos]) and not any(i.is_nodule for i in infos[n_pos:])
    diameters = [i.diameter_mm for i in infos[:n_pos]]
    assert diameters == sorted(diameters, reverse=True) and min(diameters) >= 4.0
    # Positives sit exactly on their annotations, so every one got its diameter.
    assert {round(d, 3) for d in diameters} == {round(a[4], 3) for a in tiny_luna["annotations"]}


def test_partial_download_skips_and_counts_missing_scans(tiny_luna, caplog):
    root = tiny_luna["root"]
    gone = tiny_luna["uids"][0]
    for suffix in (".mhd", ".raw"):
        next(root.rglob(gone + suffix)).unlink()
    with caplog.at_level("INFO"):
        infos = get_candidate_info_list(root)
    assert gone not in {i.series_uid for i in infos}
    assert "Skipped 8 candidates of 1 series not on disk" in caplog.text


def test_candidates_v2_name_and_csvfiles_subdir_are_found(tiny_luna):
    root = tiny_luna["root"]
    (root / "CSVFILES").mkdir()
    (root / "candidates.csv").rename(root / "CSVFILES" / "candidates_V2.csv")
    assert len(get_candidate_info_list(root)) == len(tiny_luna["candidates"])


def test_duplicate_rows_are_dropped(tiny_luna):
    root = tiny_luna["root"]
    rows = tiny_luna["candidates"]
    write_csv(root / "candidates.csv", HEADER, rows + rows[:3])
    assert len(get_candidate_info_list(root)) == len(rows)


def test_missing_data_dir_or_no_csv_names_the_flag(tmp_path):
    (tmp_path / "subset0").mkdir()
    with pytest.raises(DataError, match="give it with --candidates, or point --data-dir at the folder holding"):
        get_candidate_info_list(tmp_path / "subset0")


def test_missing_data_dir_and_no_scans(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_series_files(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no scans found"):
        find_series_files(tmp_path / "empty")


def _fake(uid, is_nodule, k=0):
    return CandidateInfo(is_nodule, 5.0 if is_nodule else 0.0, uid, XyzTuple(float(k), 0.0, 0.0))


def test_scan_split_never_puts_a_scan_on_both_sides():
    candidates = sorted([_fake(f"1.{s}", s % 3 == 0 and k == 0, k) for s in range(30) for k in range(5)],
                        reverse=True)
    train = split_candidates(candidates, 10, False, "scan")
    val = split_candidates(candidates, 10, True, "scan")
    assert len(train) + len(val) == len(candidates)
    assert not {c.series_uid for c in train} & {c.series_uid for c in val}
    assert any(c.is_nodule for c in val) and any(c.is_nodule for c in train)
    assert len({c.series_uid for c in val}) == 3  # 10 scans with nodules -> 1, 20 without -> 2


def test_candidate_split_is_the_reference_stride():
    candidates = sorted([_fake(f"1.{s}", k == 0, k) for s in range(4) for k in range(5)], reverse=True)
    val = split_candidates(candidates, 10, True, "candidate")
    train = split_candidates(candidates, 10, False, "candidate")
    assert val == candidates[::10]
    assert len(train) == len(candidates) - len(val) and not set(train) & set(val)
    assert split_candidates(candidates, 0, True) == candidates


def test_scans_without_candidate_rows_are_counted_in_the_log(tiny_luna, caplog):
    root, first = tiny_luna["root"], tiny_luna["uids"][0]
    rows = [row for row in tiny_luna["candidates"] if row[0] != first]
    csv_path = write_csv(root / "some_candidates.csv", HEADER, rows)
    with caplog.at_level("INFO"):
        infos = get_candidate_info_list(root, candidates_csv=csv_path)
    assert first not in {info.series_uid for info in infos}
    assert f"1 of the 4 scans on disk have no candidates in {csv_path}" in caplog.text


def test_held_out_scans_are_on_neither_side():
    candidates = sorted([_fake(f"1.{s}", k == 0, k) for s in range(12) for k in range(3)], reverse=True)
    held_out = {"1.0", "1.5", "1.7"}
    for split, stride in (("scan", 3), ("candidate", 4), ("scan", 0)):
        train = split_candidates(candidates, stride, False, split, held_out)
        val = split_candidates(candidates, stride, True, split, held_out)
        seen = {c.series_uid for c in train} | ({c.series_uid for c in val} if stride else set())
        assert not seen & held_out and seen == {c.series_uid for c in candidates} - held_out
    # Holding scans out does not move the others: the split is that of the remaining scans.
    rest = [c for c in candidates if c.series_uid not in held_out]
    assert split_candidates(candidates, 3, True, "scan", held_out) == split_candidates(rest, 3, True, "scan")


@pytest.mark.parametrize("n_folds", [2, 3, 10])
def test_folds_partition_the_scans_by_subset(n_folds):
    subsets = {f"1.{k}": k % 10 for k in range(47)}
    folds = assign_folds(subsets, n_folds)
    assert len(folds) == n_folds
    flat = [uid for fold in folds for uid in fold]
    assert sorted(flat) == sorted(subsets)  # each scan held out once, none twice
    for k, fold in enumerate(folds):
        assert fold == sorted(fold)
        assert {subsets[uid] % n_folds for uid in fold} == {k}
    if n_folds == 10:  # one subset per fold: fold k is subset k
        assert all({subsets[uid] for uid in fold} == {k} for k, fold in enumerate(folds))


def test_a_fold_without_scans_is_a_data_error():
    with pytest.raises(DataError, match=r"fold\(s\) 2 without scans: only subsets 0, 1, 4"):
        assign_folds({"1.1": 0, "1.2": 1, "1.3": 4}, 3)

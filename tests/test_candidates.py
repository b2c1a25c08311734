
import pytest

from luna.candidates import (CandidateInfo, find_series_files, get_candidate_info_list,
                             is_valid_series_uid, match_diameter, read_csv_rows, split_candidates,
                             CANDIDATE_COLUMNS)
from luna.errors import DataError
from luna.geometry import XyzTuple
from tests.conftest import write_csv

HEADER = list(CANDIDATE_COLUMNS)


def test_diameter_matching_uses_a_quarter_of_the_diameter_per_axis():
    annotations = [(XyzTuple(0.0, 0.0, 0.0), 8.0), (XyzTuple(50.0, 50.0, 50.0), 20.0)]
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


@pytest.mark.parametrize("header,row,message", [
    (["seriesuid", "coordX", "coordY", "coordZ"], ["1.2", 1, 2, 3], "missing column 'class'"),
    (HEADER, ["1.2", 1, "abc", 3, 0], ":2: coordY is not a number: 'abc'"),
    (HEADER, ["1.2", 1, "nan", 3, 0], ":2: coordY is not a finite number"),
    (HEADER, ["../../etc/passwd", 1, 2, 3, 0], "is not a plain UID"),
    (HEADER, ["1.2/3", 1, 2, 3, 0], "is not a plain UID"),
    (HEADER, ["1..2", 1, 2, 3, 0], "is not a plain UID"),
])
def test_bad_csv_rows_name_file_and_line(tmp_path, header, row, message):
    path = write_csv(tmp_path / "c.csv", header, [row])
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")) as info:
        list(read_csv_rows(path, CANDIDATE_COLUMNS))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_empty_missing_and_semicolon_csv(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list(read_csv_rows(tmp_path / "nope.csv", CANDIDATE_COLUMNS))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        list(read_csv_rows(tmp_path / "empty.csv", CANDIDATE_COLUMNS))
    (tmp_path / "semi.csv").write_text("seriesuid;coordX;coordY;coordZ;class\n1.2;1;2;3;0\n")
    with pytest.raises(DataError, match="not comma-separated"):
        list(read_csv_rows(tmp_path / "semi.csv", CANDIDATE_COLUMNS))


def test_missing_data_dir_and_no_scans(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_series_files(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.mhd scans found"):
        find_series_files(tmp_path / "empty")


def test_series_uid_validation():
    assert is_valid_series_uid("1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860")
    for bad in ("", "..", "a/b", "a\\b", "/abs", ".hidden", "1..2", "x" * 200, "a b"):
        assert not is_valid_series_uid(bad), bad


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

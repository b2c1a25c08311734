"""Tests for luna.luna16.csvfiles: the one reader and writer of the LUNA16 CSV files."""
import numpy as np
import pytest

from luna.errors import DataError
from luna.luna16.csvfiles import (CANDIDATE_COLUMNS, PREDICTION_COLUMNS, is_valid_series_uid, read_annotations,
                                  read_predictions, read_series_list, read_table, write_predictions)
from tests.conftest import write_csv

HEADER = list(CANDIDATE_COLUMNS)


@pytest.mark.parametrize("header,row,message", [
    (["seriesuid", "coordX", "coordY", "coordZ"], ["1.2", 1, 2, 3], "missing column 'class'"),
    (HEADER, ["1.2", 1, "abc", 3, 0], ":2: coordY is not a number: 'abc'"),
    (HEADER, ["1.2", 1, "nan", 3, 0], ":2: coordY is nan, expected a finite number"),
    (HEADER, ["../../etc/passwd", 1, 2, 3, 0], "is not a plain UID"),
    (HEADER, ["1.2/3", 1, 2, 3, 0], "is not a plain UID"),
    (HEADER, ["1..2", 1, 2, 3, 0], "is not a plain UID"),
])
def test_bad_csv_rows_name_file_and_line(tmp_path, header, row, message):
    path = write_csv(tmp_path / "c.csv", header, [row])
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")) as info:
        read_table(path, CANDIDATE_COLUMNS, 'candidates')
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_empty_missing_and_semicolon_csv(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "nope.csv", CANDIDATE_COLUMNS, "candidates")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty candidates file"):
        read_table(tmp_path / "empty.csv", CANDIDATE_COLUMNS, "candidates")
    (tmp_path / "semi.csv").write_text("seriesuid;coordX;coordY;coordZ;class\n1.2;1;2;3;0\n")
    with pytest.raises(DataError, match="not comma-separated"):
        read_table(tmp_path / "semi.csv", CANDIDATE_COLUMNS, "candidates")


def test_series_uid_validation():
    assert is_valid_series_uid("1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860")
    for bad in ("", "..", "a/b", "a\\b", "/abs", ".hidden", "1..2", "x" * 200, "a b"):
        assert not is_valid_series_uid(bad), bad


def test_a_spreadsheets_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes("\ufeffseriesuid,coordX,coordY,coordZ,diameter_mm\r\n1.2,1,2,3,6\r\n".encode("utf-8"))
    found = read_annotations(path)
    np.testing.assert_array_equal(found["1.2"], [[1, 2, 3, 6]])


def test_header_errors_show_invisible_characters(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("seriesuid\u200b,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,3,6\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"missing column 'seriesuid' \(header is 'seriesuid\\u200b',") as info:
        read_annotations(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("probability", ["1.7", "-0.2", "97"])
def test_a_probability_outside_0_1_names_file_and_line(tmp_path, probability):
    path = write_csv(tmp_path / "p.csv", list(PREDICTION_COLUMNS), [["1.2", 1, 2, 3, 0.5], ["1.2", 4, 5, 6, probability]])
    with pytest.raises(DataError, match=rf"p\.csv:3: probability is {probability}, expected a value in \[0, 1\]"):
        read_predictions(path)


def test_rows_of_other_scans_are_counted_not_parsed(tmp_path):
    path = write_csv(tmp_path / "c.csv", HEADER, [["1.2", 1, 2, 3, 0], ["9.9", "junk", 2, 3, 0], ["9.9", 1, 2, 3, 1]])
    table = read_table(path, CANDIDATE_COLUMNS, "candidates", keep={"1.2"})
    assert table.uids == ["1.2"] and table.n_skipped == 2 and table.skipped_uids == {"9.9"}
    assert table.lines.tolist() == [2]


def test_predictions_round_trip_exactly(tmp_path):
    centers = np.array([[0.1, -123.456789012345, 1e-7], [5.0, 6.0, 7.0]])
    # Probabilities too: two sure findings 1e-9 apart must not both read back as 1.
    probabilities = np.array([0.25, 1.0, 0.999999998, 0.999999999, 1.5e-12])
    centers = np.vstack([centers, [[1.0, 2.0, 3.0]] * 3])
    path = write_predictions(tmp_path / "p.csv", ["1.2", "1.3", "1.4", "1.4", "1.4"], centers, probabilities)
    back = read_predictions(path)
    np.testing.assert_array_equal(back.centers_xyz, centers)
    np.testing.assert_array_equal(back.probabilities, probabilities)
    assert path.read_text().splitlines()[0] == ",".join(PREDICTION_COLUMNS)


def test_series_list_forms(tmp_path):
    (tmp_path / "plain.txt").write_text("1.2\n\n1.3\n1.2\n")
    assert read_series_list(tmp_path / "plain.txt") == ["1.2", "1.3"]
    write_csv(tmp_path / "s.csv", list(PREDICTION_COLUMNS), [["1.4", 1, 2, 3, 0.5]])
    assert read_series_list(tmp_path / "s.csv") == ["1.4"]
    (tmp_path / "bad.txt").write_text("../etc\n")
    with pytest.raises(DataError, match="bad.txt: entry 1: series uid '../etc' is not a plain UID"):
        read_series_list(tmp_path / "bad.txt")


def test_other_tools_quoting_spacing_and_column_order_are_read(tmp_path):
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('"class","coordZ","seriesuid","coordY","coordX"\n"1","3.0","1.2","2","1e0"\n')
    spaced = tmp_path / "spaced.csv"
    spaced.write_text('class, coordX, seriesuid, coordY, coordZ, source\n1.0, 1.0, "1.2", 2, 3, tool x\n')
    for path in (quoted, spaced):
        table = read_table(path, CANDIDATE_COLUMNS, "candidates")
        assert table.uids == ["1.2"], path.name
        np.testing.assert_array_equal(table.values, [[1, 2, 3, 1]])
    assert read_series_list(quoted) == ["1.2"] and read_series_list(spaced) == ["1.2"]

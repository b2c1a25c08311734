"""Tests for luna.atomic: a replaced file is either the old one or the complete new one."""
from __future__ import annotations

import pytest

from luna.atomic import atomic_open, temp_path_for, write_text_atomic


@pytest.mark.parametrize("durable", [False, True])
def test_clean_exit_replaces_the_file(tmp_path, durable):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_open(path, durable=durable) as handle:
        handle.write(b"new")
        assert path.read_bytes() == b"old"  # nothing visible until the block ends
    assert path.read_bytes() == b"new"
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failure_half_way_keeps_the_old_file_and_no_temp(tmp_path, error):
    path = tmp_path / "out.csv"
    path.write_text("old,complete\n")
    with pytest.raises(type(error)):
        with atomic_open(path, "w", newline="") as handle:
            handle.write("new,half")
            raise error
    assert path.read_text() == "old,complete\n"
    assert not temp_path_for(path).exists() and list(tmp_path.iterdir()) == [path]


def test_write_text_keeps_line_endings(tmp_path):
    path = write_text_atomic(tmp_path / "summary.csv", "a,b\r\n1,2\r\n")
    assert path.read_bytes() == b"a,b\r\n1,2\r\n"

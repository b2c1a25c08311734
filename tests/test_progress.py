"""Progress reporting: growing log intervals, ETA lines, the bar mode."""
from __future__ import annotations

import datetime
import logging
import re
from types import SimpleNamespace

import pytest

from luna import progress
from luna.progress import enumerate_with_estimate, format_duration

ESTIMATE = re.compile(r"^(?P<desc>.+?) +(?P<ndx>\d+)/(?P<total>\d+), done at "
                      r"(?P<eta>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d), (?P<remaining>\d+:\d\d:\d\d)$")


def progress_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "luna.progress"]


def test_log_lines_at_4_8_16_32(caplog):
    caplog.set_level(logging.INFO, logger="luna.progress")
    items = list(range(100, 140))
    out = list(enumerate_with_estimate(items, "E1 Training", use_bar=False))
    assert out == list(enumerate(items))
    messages = progress_messages(caplog)
    assert messages[0] == "E1 Training ----/40, starting"
    estimates = [ESTIMATE.match(m) for m in messages[1:-1]]
    assert all(estimates), messages
    assert [int(m["ndx"]) for m in estimates] == [4, 8, 16, 32]
    assert {m["desc"] for m in estimates} == {"E1 Training"}
    assert {int(m["total"]) for m in estimates} == {40}
    assert messages[1].startswith("E1 Training    4/40, done at ")  # index right-aligned in 4
    assert re.match(r"^E1 Training ----/40, done at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", messages[-1])
    assert len(messages) == 6


def test_ndx_is_right_aligned_to_four_columns(caplog):
    caplog.set_level(logging.INFO, logger="luna.progress")
    list(enumerate_with_estimate(range(10), "x", use_bar=False))
    assert "x    4/10, done at " in progress_messages(caplog)[1]


def test_warm_up_items_are_skipped_and_not_timed(caplog, monkeypatch):
    # A fake clock: the first 10 items (warm-up) take 100 s each, later ones 1 s each.
    clock = {"now": 0.0}
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: clock["now"]))

    def slow_start():
        for ndx in range(100):
            clock["now"] += 100.0 if ndx <= 10 else 1.0
            yield ndx

    caplog.set_level(logging.INFO, logger="luna.progress")
    list(enumerate_with_estimate(slow_start(), "V", start_ndx=10, total=100, use_bar=False))
    estimates = [ESTIMATE.match(m) for m in progress_messages(caplog)[1:-1]]
    assert [int(m["ndx"]) for m in estimates] == [16, 32, 64]
    # At ndx 16: 6 items in 6 s since start_ndx, 84 left -> 84 s; warm-up would have said hours.
    assert estimates[0]["remaining"] == "0:01:24"
    assert [m["remaining"] for m in estimates] == ["0:01:24", "0:01:08", "0:00:36"]
    eta = datetime.datetime.strptime(estimates[0]["eta"], "%Y-%m-%d %H:%M:%S")
    assert abs((eta - datetime.datetime.now()).total_seconds() - 84) < 5


def test_unknown_total_logs_elapsed(caplog):
    caplog.set_level(logging.INFO, logger="luna.progress")
    out = list(enumerate_with_estimate(iter("abcdef"), "G", use_bar=False))
    assert out == list(enumerate("abcdef"))
    messages = progress_messages(caplog)
    assert messages[0] == "G ----/?, starting"
    assert re.match(r"^G    4/\?, \d+:\d\d:\d\d elapsed$", messages[1])


def test_bar_yields_the_same_items(caplog, capsys):
    caplog.set_level(logging.INFO, logger="luna.progress")
    items = [f"batch{i}" for i in range(40)]
    assert list(enumerate_with_estimate(items, "bar", use_bar=True)) == list(enumerate(items))
    messages = progress_messages(caplog)
    assert len(messages) == 1 and messages[0].startswith("bar ----/40, done at ")
    assert "40/40" in capsys.readouterr().err


def test_auto_mode_without_terminal_uses_log_lines(caplog):
    # Under pytest stderr is captured, not a terminal.
    caplog.set_level(logging.INFO, logger="luna.progress")
    list(enumerate_with_estimate(range(8), "auto"))
    assert progress_messages(caplog)[0] == "auto ----/8, starting"


def test_stopping_early_logs_no_done_line(caplog):
    caplog.set_level(logging.INFO, logger="luna.progress")
    for ndx, _ in enumerate_with_estimate(range(40), "early", use_bar=False):
        if ndx == 5:
            break
    assert not any("done at" in m and "----" in m for m in progress_messages(caplog))


def test_bad_intervals_are_rejected():
    with pytest.raises(ValueError):
        list(enumerate_with_estimate([1], "x", backoff=1, use_bar=False))


@pytest.mark.parametrize("seconds, text", [(0, "0:00:00"), (7.4, "0:00:07"), (3723, "1:02:03"),
                                           (2 * 86400 + 3 * 3600 + 4 * 60 + 5, "2d 03:04:05"),
                                           (-3, "0:00:00"), (float("nan"), "?"), (float("inf"), "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text

"""Progress of long loops: an ETA at growing intervals in logs, or a live bar on a terminal.

A line per batch floods a log; one line at the end says nothing for an hour. Like the reference,
:func:`enumerate_with_estimate` logs after 4, 8, 16, 32 ... iterations, so a run of any length
produces a handful of lines and the first estimate comes quickly. Iterations before
``start_ndx`` do not count towards the rate: the first batches are slow while data loader
workers start and caches warm up, and including them would make every estimate too late.
"""
from __future__ import annotations

import datetime
import logging
import math
import sys
import time
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def format_duration(seconds: float) -> str:
    """A duration as ``H:MM:SS``, with a day count in front when it is a day or more.

    Args:
        seconds: the duration; negative values count as 0.

    Returns:
        e.g. ``"0:00:07"``, ``"1:02:03"``, ``"2d 03:04:05"``; ``"?"`` for NaN or infinity.
    """
    if not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _log_points(print_ndx: int, backoff: int, start_ndx: int) -> Iterator[int]:
    """print_ndx, print_ndx*backoff, ... skipping points at or before start_ndx (no rate yet)."""
    point = print_ndx
    while True:
        if point > start_ndx:
            yield point
        point *= backoff


def enumerate_with_estimate(iterable: Iterable[T], desc: str, start_ndx: int = 0, print_ndx: int = 4,
                            backoff: int = 2, total: int | None = None,
                            use_bar: bool | None = None) -> Iterator[tuple[int, T]]:
    """Like ``enumerate(iterable)``, reporting progress and an estimated time of completion.

    Args:
        iterable: what to loop over (typically a DataLoader).
        desc: a label for the report, e.g. ``"E1 Training"``.
        start_ndx: iterations before this index are not timed (warm-up).
        print_ndx: the first index that gets a log line.
        backoff: each later log line comes at ``backoff`` times the previous index.
        total: the number of items; ``len(iterable)`` when None and the iterable has a length.
        use_bar: True for a tqdm bar, False for log lines; None picks a bar when stderr is a
            terminal and log lines otherwise (files, pipes, batch jobs).

    Yields:
        ``(index, item)`` pairs, exactly as ``enumerate`` would.
    """
    if print_ndx < 1 or backoff < 2:
        raise ValueError(f"print_ndx must be >= 1 and backoff >= 2, got {print_ndx} and {backoff}")
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if use_bar is None:
        use_bar = _stderr_is_terminal()
    if use_bar:
        yield from _with_bar(iterable, desc, total)
    else:
        yield from _with_log_lines(iterable, desc, start_ndx, print_ndx, backoff, total)
    log.info("%s ----/%s, done at %s", desc, _total_text(total), _now_text())


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr (notebooks, daemons)
        return False


def _total_text(total: int | None) -> str:
    return "?" if total is None else str(total)


def _now_text() -> str:
    return datetime.datetime.now().strftime(_TIME_FORMAT)


def _with_bar(iterable: Iterable[T], desc: str, total: int | None) -> Iterator[tuple[int, T]]:
    # Imported here so that library users who never see a terminal do not pay for tqdm.
    from tqdm import tqdm

    with tqdm(iterable, desc=desc, total=total, file=sys.stderr, dynamic_ncols=True) as bar:
        yield from enumerate(bar)


def _with_log_lines(iterable: Iterable[T], desc: str, start_ndx: int, print_ndx: int, backoff: int,
                    total: int | None) -> Iterator[tuple[int, T]]:
    log.info("%s ----/%s, starting", desc, _total_text(total))
    points = _log_points(print_ndx, backoff, start_ndx)
    next_point = next(points)
    start_time = time.monotonic()
    for ndx, item in enumerate(iterable):
        if ndx == start_ndx:
            # Timing starts once the warm-up items are done and this one has been fetched.
            start_time = time.monotonic()
        elif ndx == next_point:
            _log_estimate(desc, ndx, total, done=ndx - start_ndx, elapsed=time.monotonic() - start_time)
        while next_point <= ndx:
            next_point = next(points)
        yield ndx, item


def _log_estimate(desc: str, ndx: int, total: int | None, done: int, elapsed: float) -> None:
    """One line with the ETA, extrapolated from ``done`` items in ``elapsed`` seconds."""
    if total is None:
        log.info("%s %4d/?, %s elapsed", desc, ndx, format_duration(elapsed))
        return
    remaining = elapsed / done * (total - ndx)
    eta = datetime.datetime.now() + datetime.timedelta(seconds=remaining)
    log.info("%s %4d/%d, done at %s, %s", desc, ndx, total, eta.strftime(_TIME_FORMAT),
             format_duration(remaining))

"""Replacing a file so that readers, and a crash, see either the old file or the complete new one.

Everything luna writes for later (cache entries, checkpoints, results files, the summary, the
report) goes through :func:`atomic_open`: the data goes to a temp file next to the target, which
is then renamed over it. A rename within one directory is atomic on POSIX and Windows file
systems; across file systems it would be a copy, which is why the temp file is not in /tmp.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def temp_path_for(path: Path) -> Path:
    """The hidden temp file :func:`atomic_open` writes before renaming it over ``path``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", durable: bool = False, **open_kwargs) -> Iterator[IO]:
    """Open a temp file for writing; on a clean exit it replaces ``path``.

    Args:
        path: the file to create or replace; its directory must exist.
        mode: a write mode for :func:`open` (``"wb"``, ``"w"``...).
        durable: fsync the data before the rename and the directory after it, so that the new
            file survives a power cut, not only a killed process (checkpoints, cache entries).
        open_kwargs: passed to :func:`open` (``newline=""``, ``encoding=...``).

    Yields:
        The open temp file. If the block raises (KeyboardInterrupt included), the temp file is
        removed, ``path`` is left as it was, and the exception propagates.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())  # the data on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename == str(tmp):
            # The user knows the file they asked for, not our hidden temp file beside it.
            exc.filename = str(path)
        raise
    if durable:
        _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically; returns the path."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return Path(path)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; some platforms cannot open a directory, which is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

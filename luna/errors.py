"""Errors that the command line turns into one clear line and an exit status.

Library code raises these for mistakes in the user's input; anything else that escapes
is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class LunaError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""

    exit_code = 1


class DataError(LunaError):
    """Input data is missing or malformed (files, CSVs, scans, checkpoints). Exit status 1."""

    exit_code = 1


class UsageError(LunaError):
    """A flag or argument is out of range or contradicts another. Exit status 2."""

    exit_code = 2


def library_reason(exc: BaseException, limit: int = 240) -> str:
    """What a C++ library's exception says is wrong, in one line.

    ITK's text starts with the source file and line that threw (``...ImageReaderBase.cxx:99:``)
    and says what is wrong after ``ERROR:``, behind the name and address of the object that
    threw; a reason that ends in ``:`` is continued by the library's innermost message, the
    message's last line.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return "unreadable"
    found = next((match for match in map(_ERROR_LINE.search, lines) if match), None)
    reason = _OBJECT_PREFIX.sub("", found.group(1)) if found else lines[0]
    if reason.endswith(":") and lines[-1] not in reason:
        reason = f"{reason} {lines[-1]}"
    return reason[:limit]


_ERROR_LINE = re.compile(r"ERROR:?\s*(.*)")
_OBJECT_PREFIX = re.compile(r"^\w+\(0x[0-9a-fA-F]+\):\s*")


def is_disk_full(exc: OSError) -> bool:
    """True for "no space left on the device" errors, including numpy's, which carry no errno."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "free space" in str(exc)


# What an OS error on a path means to the person who gave the path. Other errors (EIO, ...) are
# not the user's doing and keep their traceback.
_PATH_PROBLEMS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "name too long",
    errno.ELOOP: "too many levels of symbolic links",
}


def describe_path_error(exc: OSError) -> str | None:
    """One line naming the path of an OS error and what is wrong with it, or None when the error
    is not about a path (no file name, or an errno that means a broken machine, not a bad path)."""
    if not isinstance(exc.filename, (str, bytes, os.PathLike)) or not exc.filename \
            or exc.errno not in _PATH_PROBLEMS:
        return None
    path = Path(os.fsdecode(exc.filename))
    what = _PATH_PROBLEMS[exc.errno]
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        # The path itself, or a folder on the way to it, is a file: name that file.
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            writing = f" (writing {path})" if blocker != path else ""
            return f"{blocker}: is a file where a folder is expected{writing}"
    return f"{path}: {what}"

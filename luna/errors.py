"""Errors that the command line turns into one clear line and an exit status.

Library code raises these for mistakes in the user's input; anything else that escapes
is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno


class LunaError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""

    exit_code = 1


class DataError(LunaError):
    """Input data is missing or malformed (files, CSVs, scans, checkpoints). Exit status 1."""

    exit_code = 1


class UsageError(LunaError):
    """A flag or argument is out of range or contradicts another. Exit status 2."""

    exit_code = 2


def is_disk_full(exc: OSError) -> bool:
    """True for "no space left on the device" errors, including numpy's, which carry no errno."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "free space" in str(exc)

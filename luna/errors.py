"""Errors that the command line turns into one clear line and an exit status.

Library code raises these for mistakes in the user's input; anything else that escapes
is a bug and keeps its traceback.
"""


class LunaError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""

    exit_code = 1


class DataError(LunaError):
    """Input data is missing or malformed (files, CSVs, scans, checkpoints). Exit status 1."""

    exit_code = 1


class UsageError(LunaError):
    """A flag or argument is out of range or contradicts another. Exit status 2."""

    exit_code = 2

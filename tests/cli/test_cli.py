"""The luna command: dispatch, --help of every app, one-line errors and their exit codes."""
import errno
import subprocess
import sys

import pytest

from luna.cli import COMMANDS, main, run
from luna.cli.common import run_app
from luna.cli.prepcache import LunaPrepCacheApp
from luna.errors import DataError


def test_usage_and_unknown_command(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "commands:" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_a_full_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: luna") and "--debug" in out
    # Plain text for a terminal: no reStructuredText markup, no sources a user cannot read, no
    # "default" that says nothing.
    for unwanted in ("``", "SPEC", "(default: None)", "(default: False)", ":func:", ":class:"):
        assert unwanted not in out, unwanted


def test_python_dash_m_reaches_the_same_apps():
    for args in (["luna", "train", "--help"], ["luna.cli.train", "--help"], ["luna.cli.prepcache", "--help"]):
        result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "--num-workers" in result.stdout, result.stderr


def test_version(capsys):
    from luna import __version__
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"luna {__version__}"


def test_data_error_is_one_line_exit_1_and_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["--data-dir", str(tmp_path / "missing"), "--cache-dir", str(tmp_path / "c")]
    assert run_app(LunaPrepCacheApp, argv, prog="luna prepcache") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"luna prepcache: error: data dir {tmp_path / 'missing'} does not exist"
    assert not any("Traceback" in line for line in err)
    with pytest.raises(DataError):
        run_app(LunaPrepCacheApp, argv + ["--debug"])


class _Failing:
    """An app whose main raises the given error (what any command meets on a full disk)."""

    error: OSError

    def __init__(self, argv):
        pass

    def main(self):
        raise self.error


def test_full_disk_is_one_line_exit_1_other_os_errors_keep_their_traceback(capsys):
    _Failing.error = OSError(errno.ENOSPC, "No space left on device", "runs/x/summary.csv")
    assert run_app(_Failing, [], prog="luna train") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["luna train: error: no space left on the device writing runs/x/summary.csv; "
                   "free some space and run again (No space left on device)"]
    with pytest.raises(OSError):
        run_app(_Failing, ["--debug"])
    _Failing.error = OSError(errno.EIO, "Input/output error")  # not the user's doing: a bug or a broken disk
    with pytest.raises(OSError):
        run_app(_Failing, [])


@pytest.mark.parametrize("error, expected", [
    (PermissionError(errno.EACCES, "Permission denied", "cache/x.npy"), "cache/x.npy: permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/cache"), "/ro/cache: read-only file system"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "out.csv"), "out.csv: is a folder, not a file"),
])
def test_an_os_error_on_a_path_is_one_line_naming_it_exit_1(error, expected, capsys):
    _Failing.error = error
    assert run_app(_Failing, [], prog="luna prepcache") == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"luna prepcache: error: {expected}"]
    with pytest.raises(OSError):
        run_app(_Failing, ["--debug"])


def test_a_file_where_a_folder_is_expected_names_the_file(tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    _Failing.error = NotADirectoryError(errno.ENOTDIR, "Not a directory", str(tmp_path / "runs" / "luna" / "x"))
    assert run_app(_Failing, [], prog="luna train") == 1
    assert capsys.readouterr().err.strip() == (f"luna train: error: {tmp_path / 'runs'}: is a file where a folder "
                                               f"is expected (writing {tmp_path / 'runs' / 'luna' / 'x'})")


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["prepcache", "--num-workers", "-1"])
    assert info.value.code == 2 and "must be >= 0" in capsys.readouterr().err
    for command in ("prepcache", "train"):
        with pytest.raises(SystemExit) as info:
            main([command, "--crop-mm", "20"])
        assert info.value.code == 2 and "voxel size of 0.1-10 mm, got 20" in capsys.readouterr().err


def test_notebook_helper_runs_an_app_by_name_or_dotted_path(tmp_path):
    # The command name, the new dotted path and the path from before the layout moved all work.
    run("synth", f"--out {tmp_path / 'a'} --series 2 --size tiny")
    run("luna.cli.synth.LunaSynthApp", f"--out {tmp_path / 'b'} --series 2 --size tiny")
    run("luna.synth.LunaSynthApp", f"--out {tmp_path / 'd'} --series 2 --size tiny")
    assert all((tmp_path / name / "candidates.csv").exists() for name in "abd")
    with pytest.raises(DataError):  # a notebook sees the exception itself
        run("luna.prepcache.LunaPrepCacheApp", f"--data-dir {tmp_path / 'nope'}")
    from luna import run as public_run
    assert public_run is run

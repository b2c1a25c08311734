"""The luna command: dispatch, --help of every app, one-line errors and their exit codes."""
import errno
import subprocess
import sys

import pytest

from luna.app import run, run_app
from luna.cli import COMMANDS, main
from luna.errors import DataError
from luna.prepcache import LunaPrepCacheApp


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


def test_python_dash_m_reaches_the_same_apps():
    for module in ("luna", "luna.training", "luna.prepcache"):
        args = [sys.executable, "-m", module, "--help"] if module != "luna" else [sys.executable, "-m", "luna", "train", "--help"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "--batch-size" in result.stdout or "--num-workers" in result.stdout


def test_data_error_is_one_line_exit_1_and_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["--data-dir", str(tmp_path / "missing"), "--cache-dir", str(tmp_path / "c")]
    assert run_app(LunaPrepCacheApp, argv, prog="luna prepcache") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"luna prepcache: error: data dir {tmp_path / 'missing'} does not exist or is not a directory"
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


def test_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["prepcache", "--num-workers", "-1"])
    assert info.value.code == 2 and "must be >= 0" in capsys.readouterr().err
    for command in ("prepcache", "train"):
        with pytest.raises(SystemExit) as info:
            main([command, "--crop-mm", "20"])
        assert info.value.code == 2 and "voxel size of 0.1-10 mm, got 20" in capsys.readouterr().err


def test_notebook_helper_runs_an_app_by_dotted_path(tmp_path):
    run("luna.synth.LunaSynthApp", f"--out {tmp_path / 'd'} --series 2 --size tiny")
    assert (tmp_path / "d" / "candidates.csv").exists()
    with pytest.raises(DataError):  # a notebook sees the exception itself
        run("luna.prepcache.LunaPrepCacheApp", f"--data-dir {tmp_path / 'nope'}")

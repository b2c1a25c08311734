"""Faults a long training run must survive, with real processes: kill -9 and resume, a loss
that blows up, running out of memory, bad flags; and a soak run with flat RSS and file handles."""
import csv
import errno
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from luna.cli.common import run_app
from luna.runtime.checkpoint import load_checkpoint
from luna.cli.train import LunaTrainingApp
from tests.conftest import make_tiny_luna, train_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_luna(tmp_path_factory.mktemp("faults") / "luna", n_series=4, negatives_per_scan=6)


def _argv(data, tmp_path, *extra):
    return train_argv(data["root"], tmp_path, *extra, val_stride=4)


def _run_dir(tmp_path) -> Path:
    (run_dir,) = [p for p in (tmp_path / "runs" / "luna").iterdir() if (p / "run.json").exists()]
    return run_dir


def _summary_epochs(run_dir: Path) -> list[str]:
    with open(run_dir / "summary.csv") as handle:
        return [row["epoch"] for row in csv.DictReader(handle)]


def test_kill_9_mid_epoch_then_resume(data, tmp_path):
    cmd = [sys.executable, "-m", "luna", "train",
           *_argv(data, tmp_path, "--epochs", "4", "--epoch-size", "96", "--no-augment")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        # Wait for the first checkpoint, then kill somewhere in the middle of epoch 2.
        while time.monotonic() < deadline and proc.poll() is None:
            runs = list((tmp_path / "runs" / "luna").glob("*/last.pt")) if (tmp_path / "runs").exists() else []
            if runs:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    run_dir = _run_dir(tmp_path)
    done = load_checkpoint(run_dir / "last.pt")["epoch"]
    assert 1 <= done < 4 and _summary_epochs(run_dir) == [str(e) for e in range(1, done + 1)]

    result = subprocess.run([*cmd, "--resume", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Resuming {run_dir} after epoch {done}" in result.stderr
    assert _summary_epochs(run_dir) == ["1", "2", "3", "4"]
    trn_dir = next((tmp_path / "runs" / "luna").glob("*-trn_cls-luna"))
    acc = EventAccumulator(str(trn_dir))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("loss/all")]
    assert steps == [96, 192, 288, 384]  # no duplicates, no gaps


def test_loss_blowing_up_stops_with_epoch_and_batch_and_keeps_the_checkpoint(data, tmp_path, capsys):
    sgd = ("--lr-schedule", "constant",)
    assert run_app(LunaTrainingApp, _argv(data, tmp_path, "--epochs", "1", "--epoch-size", "16", *sgd)) == 0
    run_dir = _run_dir(tmp_path)
    before = (run_dir / "last.pt").read_bytes()
    code = run_app(LunaTrainingApp, _argv(data, tmp_path, "--epochs", "2", "--epoch-size", "16",
                                          "--resume", str(run_dir), "--lr", "1e30", *sgd), prog="luna train")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert err.startswith("luna train: error: loss became") and "at epoch 2, batch" in err and "--lr" in err
    assert (run_dir / "last.pt").read_bytes() == before
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1


def test_out_of_memory_suggests_a_smaller_batch(data, tmp_path):
    # A real allocation failure: cap the address space, then ask for a huge batch.
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
    cmd = [sys.executable, "-m", "luna", "train", *_argv(data, tmp_path, "--epochs", "1")]
    cmd[cmd.index("--batch-size") + 1] = "4096"
    cmd += ["--epoch-size", "4096"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=limit,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1, result.stderr[-2000:]
    assert "out of memory" in last and "--batch-size 2048" in last and "Traceback" not in result.stderr


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--epochs", "-1"], "argument --epochs: must be >= 1, got -1"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0"),
    (["--hard-negatives", "1.5"], "argument --hard-negatives: must be between 0 and 1, got 1.5"),
    (["--threshold", "-0.1"], "argument --threshold: must be between 0 and 1, got -0.1"),
    (["--near-negatives", "0.2"], "unrecognized arguments: --near-negatives"),
])
def test_flags_out_of_range_are_usage_errors(data, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as info:
        LunaTrainingApp(_argv(data, tmp_path, *flags))
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_resume_of_something_that_is_not_a_run(data, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_app(LunaTrainingApp, _argv(data, tmp_path, "--resume", str(tmp_path / "empty"))) == 1
    assert "not a luna run directory" in capsys.readouterr().err


def test_resume_with_another_model_names_the_one_it_trained(data, tmp_path, capsys):
    assert run_app(LunaTrainingApp, _argv(data, tmp_path, "--epochs", "1", "--epoch-size", "8",
                                          "--model", "luna_bn")) == 0
    run_dir = _run_dir(tmp_path)
    before = (run_dir / "last.pt").read_bytes()
    # A resume takes the run's model; asking for another one is refused, and touches nothing.
    assert run_app(LunaTrainingApp, _argv(data, tmp_path, "--epochs", "2", "--model", "luna_centre",
                                          "--resume", str(run_dir))) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the run was trained with --model luna_bn, not --model luna_centre" in err
    assert (run_dir / "last.pt").read_bytes() == before


def _error_line(capsys) -> str:
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("luna train: error:")]
    return line


def test_a_runs_dir_that_is_a_file_is_one_line(data, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.write_text("a file")
    assert run_app(LunaTrainingApp, _argv(data, tmp_path, "--epoch-size", "8"), prog="luna train") == 1
    assert _error_line(capsys).startswith(f"luna train: error: {runs}: is a file where a folder is expected")


def test_a_read_only_cache_dir_is_one_line(data, tmp_path, capsys, monkeypatch):
    import luna.atomic

    def read_only(path, *args, **kwargs):  # what a read-only mount answers, even to root
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(luna.atomic, "open", read_only, raising=False)
    assert run_app(LunaTrainingApp, _argv(data, tmp_path, "--epoch-size", "8"), prog="luna train") == 1
    line = _error_line(capsys)
    assert line.startswith(f"luna train: error: {tmp_path / 'cache'}") and line.endswith(": read-only file system")


def test_soak_rss_and_open_files_stay_flat(data, tmp_path):
    epochs = 150
    cmd = [sys.executable, "-m", "luna", "train",
           *_argv(data, tmp_path, "--epochs", str(epochs), "--epoch-size", "8", "--no-augment")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []  # (epochs done, rss, open fds)
    try:
        ps = psutil.Process(proc.pid)
        deadline = time.monotonic() + 900  # ~1-2 min on a quiet machine; generous for a busy one
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                runs = list((tmp_path / "runs" / "luna").glob("*/summary.csv"))
                done = sum(1 for _ in open(runs[0])) - 1 if runs else 0
                samples.append((done, ps.memory_info().rss, ps.num_fds()))
            except (psutil.NoSuchProcess, FileNotFoundError, IndexError):
                pass
            time.sleep(0.05)  # many samples a window: a median of a few is as noisy as the swings
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
    # RSS moves by up to ~120 MiB from one sample to the next (~150 MiB over a run) as batches come
    # and go, so a window's maximum is noise: compare the medians of two windows of the same length,
    # which a leak of 0.5 MiB an epoch (~55 MiB between them) still moves past the bound.
    warm = [s for s in samples if 20 <= s[0] < 40]
    late = [s for s in samples if s[0] >= epochs - 20]
    assert warm and late, samples[-3:]
    rss_growth = statistics.median(s[1] for s in late) - statistics.median(s[1] for s in warm)
    assert rss_growth < 40 * 2**20, f"RSS grew {rss_growth / 2**20:.1f} MiB over {epochs} epochs"
    assert max(s[2] for s in late) <= max(s[2] for s in warm) + 2

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from luna.data.crops import crop_candidate

from luna.cli.common import run_app
from luna.data.cache import CropCache
from luna.data.candidates import get_candidate_info_list
from luna.io.scans import find_series_files
from luna.io.ct import Ct
from luna.cli.prepcache import LunaPrepCacheApp
from tests.conftest import write_csv


def _all_valid(root, cache_dir):
    paths = find_series_files(root)
    infos = get_candidate_info_list(root)
    cache = CropCache(cache_dir)
    by_uid = {}
    for info in infos:
        by_uid.setdefault(info.series_uid, []).append(tuple(info.center_xyz))
    return {uid: cache.is_valid(uid, paths[uid], c) for uid, c in by_uid.items()}


def test_prepcache_fills_every_scan_and_resumes(tiny_luna, tmp_path, caplog):
    root, cache_dir = tiny_luna["root"], tmp_path / "cache"
    first = tiny_luna["uids"][:2]
    # An "interrupted" run: only two scans got done.
    LunaPrepCacheApp(["--data-dir", str(root), "--cache-dir", str(cache_dir), "--series", *first,
                      "--num-workers", "0"]).main()
    assert sum(_all_valid(root, cache_dir).values()) == 2
    with caplog.at_level("INFO"):
        LunaPrepCacheApp(["--data-dir", str(root), "--cache-dir", str(cache_dir), "--num-workers", "2"]).main()
    assert "2 of 4 scans already cached; filling 2 scans" in caplog.text
    assert all(_all_valid(root, cache_dir).values())


def test_prepcache_killed_midway_then_rerun_gives_exact_crops(tmp_path):
    from tests.conftest import make_tiny_luna
    data = make_tiny_luna(tmp_path / "luna", n_series=6, shape_irc=(100, 256, 256), negatives_per_scan=200)
    root, cache_dir = data["root"], tmp_path / "cache"
    cmd = [sys.executable, "-m", "luna", "prepcache", "--data-dir", str(root), "--cache-dir", str(cache_dir),
           "--num-workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill (SIGKILL: no cleanup runs) as soon as the first entry is complete, mid-way through.
    deadline = time.monotonic() + 60
    while proc.poll() is None and not list(cache_dir.rglob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prepcache finished before it could be killed"
    assert 1 <= len(list(cache_dir.rglob("*.json"))) < 6
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    assert all(_all_valid(root, cache_dir).values())
    cache = CropCache(cache_dir)
    paths = find_series_files(root)
    infos = get_candidate_info_list(root)
    for uid in data["uids"]:
        centers = [tuple(i.center_xyz) for i in infos if i.series_uid == uid]
        crops, _ = cache.open_entry(uid, paths[uid], centers)
        ct = Ct(paths[uid])
        for row in (0, len(centers) // 2, len(centers) - 1):
            np.testing.assert_array_equal(crops[row], crop_candidate(ct, centers[row], (32, 48, 48))[0])
    assert not list(cache_dir.rglob(".*tmp*"))


def test_candidate_outside_scan_is_one_line_and_cache_intact(tiny_luna, tmp_path, capsys):
    root, cache_dir = tiny_luna["root"], tmp_path / "cache"
    assert run_app(LunaPrepCacheApp, ["--data-dir", str(root), "--cache-dir", str(cache_dir)]) == 0
    before = {p: p.read_bytes() for p in cache_dir.rglob("*") if p.is_file()}
    rows = tiny_luna["candidates"] + [[tiny_luna["uids"][0], 5000.0, 0.0, 0.0, 0]]
    write_csv(root / "candidates.csv", ["seriesuid", "coordX", "coordY", "coordZ", "class"], rows)
    code = run_app(LunaPrepCacheApp, ["--data-dir", str(root), "--cache-dir", str(cache_dir),
                                      "--num-workers", "0"], prog="luna prepcache")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("luna prepcache: error: series ") and "outside the scan" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert all(p.read_bytes() == b for p, b in before.items())


@pytest.mark.parametrize("argv,message", [
    (["--data-dir", "/nonexistent/luna"], "does not exist"),
    (["--series", "9.9.9"], "no such series"),
])
def test_bad_input_one_line(tiny_luna, tmp_path, capsys, argv, message):
    base = ["--data-dir", str(tiny_luna["root"]), "--cache-dir", str(tmp_path / "c"), "--num-workers", "0"]
    assert run_app(LunaPrepCacheApp, base + argv) == 1
    assert message in capsys.readouterr().err


def test_help_lists_every_flag_with_default(capsys):
    with pytest.raises(SystemExit) as info:
        LunaPrepCacheApp(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data-dir", "--cache-dir", "--num-workers", "--candidates", "--annotations", "--series"):
        assert flag in out
    assert "(default:" in out


def test_too_little_disk_is_one_line_before_any_work(tiny_luna, tmp_path, capsys, monkeypatch):
    # The disk's free space is the environment, not luna: report a nearly full one.
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr("luna.data.cache.shutil.disk_usage",
                        lambda path: real(path)._replace(free=50 * 2 ** 20))
    cache_dir = tmp_path / "cache"
    code = run_app(LunaPrepCacheApp, ["--data-dir", str(tiny_luna["root"]), "--cache-dir", str(cache_dir),
                                      "--num-workers", "0"], prog="luna prepcache")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("luna prepcache: error: crop cache ") and "GB are free" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not [p for p in cache_dir.rglob("*") if p.is_file()]


def test_disk_full_while_writing_keeps_earlier_entries(tiny_luna, tmp_path, capsys, monkeypatch):
    root, cache_dir = tiny_luna["root"], tmp_path / "cache"
    assert run_app(LunaPrepCacheApp, ["--data-dir", str(root), "--cache-dir", str(cache_dir),
                                      "--series", tiny_luna["uids"][0]]) == 0
    before = {p: p.read_bytes() for p in cache_dir.rglob("*") if p.is_file()}
    assert before

    def full_disk(*args, **kwargs):  # what numpy raises when the disk fills during a write
        raise OSError("Not enough free space to write 1179648 bytes after offset 128")

    monkeypatch.setattr("luna.data.cache.np.save", full_disk)
    code = run_app(LunaPrepCacheApp, ["--data-dir", str(root), "--cache-dir", str(cache_dir),
                                      "--num-workers", "0"], prog="luna prepcache")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("luna prepcache: error: crop cache ") and "no space left" in err[-1]
    assert ".npy" in err[-1] and "Traceback" not in "\n".join(err)
    after = {p: p.read_bytes() for p in cache_dir.rglob("*") if p.is_file()}
    assert after == before  # the finished entry is intact and no partial one or temp file is left


def _error_line(capsys) -> str:
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("luna prepcache: error:")]
    return line


def test_a_cache_dir_that_is_a_file_is_one_line(tiny_luna, tmp_path, capsys):
    cache_file = tmp_path / "cache"
    cache_file.write_text("a file, not a folder")
    code = run_app(LunaPrepCacheApp, ["--data-dir", str(tiny_luna["root"]), "--cache-dir", str(cache_file),
                                      "--num-workers", "0"], prog="luna prepcache")
    assert code == 1 and _error_line(capsys).startswith(f"luna prepcache: error: {cache_file}: is a file where "
                                                        "a folder is expected")
    assert cache_file.read_text() == "a file, not a folder"


def test_a_read_only_cache_dir_is_one_line(tiny_luna, tmp_path, capsys, monkeypatch):
    # Running as root, chmod 0555 would not stop a write: the file system refuses it instead.
    import luna.atomic

    def read_only(path, *args, **kwargs):  # atomic_open opens its hidden temp file
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(luna.atomic, "open", read_only, raising=False)
    cache_dir = tmp_path / "cache"
    code = run_app(LunaPrepCacheApp, ["--data-dir", str(tiny_luna["root"]), "--cache-dir", str(cache_dir),
                                      "--num-workers", "0"], prog="luna prepcache")
    line = _error_line(capsys)
    assert code == 1 and line.endswith(": read-only file system") and str(cache_dir) in line
    assert ".tmp-" not in line  # the file the user would look for, not the hidden temp file


def test_an_unwritable_cache_dir_for_real(tiny_luna, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o555)
    if os.access(cache_dir, os.W_OK):
        pytest.skip("running as root: chmod does not take write permission away")
    code = run_app(LunaPrepCacheApp, ["--data-dir", str(tiny_luna["root"]), "--cache-dir", str(cache_dir),
                                      "--num-workers", "0"], prog="luna prepcache")
    assert code == 1 and _error_line(capsys).endswith(": permission denied")


def test_two_torchrun_processes_share_the_scans_and_fill_the_same_cache(tiny_luna, tmp_path):
    root = tiny_luna["root"]
    argv = ["prepcache", "--data-dir", str(root), "--num-workers", "0"]
    single = [sys.executable, "-m", "luna", *argv, "--cache-dir", str(tmp_path / "single")]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "luna",
           *argv, "--cache-dir", str(tmp_path / "ddp")]
    for cmd in (single, ddp):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    # 4 scans: each process fills its own 2, and the entries are those of one process, byte for byte.
    assert result.stderr.count("0 of 2 scans already cached; filling 2 scans") == 2, result.stderr[-3000:]
    assert all(_all_valid(root, tmp_path / "ddp").values())
    single_files = sorted(p.relative_to(tmp_path / "single") for p in (tmp_path / "single").rglob("*.npy"))
    assert single_files and single_files == sorted(p.relative_to(tmp_path / "ddp")
                                                   for p in (tmp_path / "ddp").rglob("*.npy"))
    for rel in single_files:
        assert (tmp_path / "single" / rel).read_bytes() == (tmp_path / "ddp" / rel).read_bytes()

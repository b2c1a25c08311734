import re

import pytest
import torch

from luna.cli.common import run_app
from luna.cli.bench_loader import LunaBenchLoaderApp
from luna.train.throughput import find_max_batch, measure_loader
from luna.cli import main as cli_main
from luna.data.dataset import LunaDataset


def _table_rows(text: str) -> dict[tuple[int, int], float]:
    """(workers, batch) -> samples/s from the printed table."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", line)
        if match:
            rows[(int(match[1]), int(match[2]))] = float(match[4])
    return rows


def test_bench_loader_fills_the_cache_and_prints_the_table(tiny_luna, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    status = run_app(LunaBenchLoaderApp, ["--data-dir", str(tiny_luna["root"]), "--cache-dir", str(cache_dir),
                                          "--batches", "2", "--num-workers", "0", "1", "--batch-sizes", "4",
                                          "--device", "cpu"])
    out = capsys.readouterr().out
    assert status == 0
    assert "samples/s" in out and "32 candidates" in out
    rows = _table_rows(out)
    assert set(rows) == {(0, 4), (1, 4)}
    assert all(value > 0 for value in rows.values())
    # Warm cache: one entry per scan was written before timing.
    assert len(list(cache_dir.rglob("*.npy"))) == len(tiny_luna["uids"])


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench-loader", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data-dir", "--cache-dir", "--num-workers", "--batch-sizes", "--batches", "--device",
                 "--find-max-batch", "--max-batch"):
        assert flag in out
    assert "default: 50" in out


def test_max_batch_without_find_is_a_usage_error(tiny_luna, capsys):
    status = run_app(LunaBenchLoaderApp, ["--data-dir", str(tiny_luna["root"]), "--max-batch", "4"])
    assert status == 2
    assert "--max-batch only applies with --find-max-batch" in capsys.readouterr().err


def test_measure_loader_counts_only_timed_batches(tiny_luna, tmp_path):
    dataset = LunaDataset(tiny_luna["root"], val_stride=0, cache_dir=tmp_path / "cache")
    result = measure_loader(dataset, batch_size=3, num_workers=0, batches=5)
    assert (result.batches, result.batch_size) == (5, 3)
    assert result.seconds > 0 and result.first_batch_s > 0
    assert result.samples_per_s == pytest.approx(15 / result.seconds)


def test_find_max_batch_stops_at_the_cap_on_cpu(tmp_path):
    largest, tried, reason = find_max_batch(torch.device("cpu"), start=1, cap=4, precision="fp32",
                                            channels_last="off")
    assert largest == 4
    assert [size for size, _ in tried] == [1, 2, 4]
    assert all(seconds > 0 for _, seconds in tried)
    assert "cap of 4" in reason


def test_find_max_batch_reports_an_allocation_that_fails():
    # 2**38 crops of 32x48x48 float32 is 64 PiB: the allocator refuses at once, no OOM killer.
    largest, tried, reason = find_max_batch(torch.device("cpu"), start=2**38, cap=2**38, precision="fp32",
                                            channels_last="off")
    assert (largest, tried) == (0, [])
    assert reason.startswith(f"batch {2**38} failed:")

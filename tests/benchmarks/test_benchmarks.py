"""benchmarks/: the scripts still run, and both designs they compare still cut the same crops.

The benchmarks are not part of the package, so nothing else would notice when a change to luna
breaks one (a reoriented scan, a renamed function) until someone reruns it for a figure.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


def test_bench_cache_quick_runs_and_writes_its_ratios(tmp_path):
    out = tmp_path / "bench_cache_quick.txt"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_cache.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "same crops, labels, uids and centres from all caches" in text
    assert "ratio ours / gzip reference:" in text


def test_bench_training_feeds_both_designs_the_same_samples(tmp_path):
    bench = _load("bench_training")
    reference_cache = sys.modules["reference_cache"]
    data_dir, ours_dir, ref_dir = tmp_path / "data", tmp_path / "ours", tmp_path / "ref"
    n_series, ratio, val_stride, _ = bench.SETTINGS["quick"]
    bench.make_data(data_dir, n_series, ratio)
    bench.fill_caches(data_dir, ours_dir, ref_dir)
    from luna.io.scans import find_series_files
    stored = [reference_cache.stored_in_lps(p) for p in find_series_files(data_dir).values()]
    # The data has scans stored in another order (the check must skip them) and LPS ones.
    assert any(stored) and not all(stored)
    assert bench.check_same_samples(data_dir, ours_dir, ref_dir, val_stride) > 0

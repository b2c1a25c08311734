"""Our crop cache against the reference's, side by side on the same data in one run.

Measures (see benchmarks/README.md): warm random-order sample reads per second in one process,
DataLoader throughput with 0/1/2 workers, the model's CPU training speed (the loader must keep
ahead of it), cache bytes per candidate with the full-LUNA16 projection, and the wall time and
peak memory of filling each cache.

    .venv/bin/python benchmarks/bench_cache.py            # ~3 min, writes results/bench_cache.txt
    .venv/bin/python benchmarks/bench_cache.py --quick    # ~20 s smoke run

Figures on a shared machine are noisy: every timing is the best of ``--repeats`` runs, and the
load average is recorded with them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from bench_report import Report, load_average  # noqa: E402

from luna.data.candidates import get_candidate_info_list  # noqa: E402
from luna.io.scans import find_series_files  # noqa: E402
from luna.data.crops import CropConfig  # noqa: E402
from luna.io.metaimage import read_mhd_header  # noqa: E402

LUNA16_CANDIDATES = 551_065
INT16_CROP_BYTES = 32 * 48 * 48 * 2
DESIGNS = {"ours": "ours (int16 .npy memmap per scan)",
           "gzip": "reference (pickle + gzip in diskcache)",
           "as-written": "reference as its code runs (pickle, uncompressed)",
           "none": "no cache: a fresh float32 tensor (the ceiling)"}


# --------------------------------------------------------------------------- data and machine

def make_data(data_dir: Path, quick: bool) -> str:
    """Write the benchmark's scans; return a line saying what was written."""
    n_series, ratio = (2, 10) if quick else (8, 40)
    try:
        from luna.synth import make_dataset
        summary = make_dataset(data_dir, n_series=n_series, size="small", negatives_per_positive=ratio,
                               workers=2)
        return (f"luna.phantom.make_dataset(n_series={n_series}, size='small', negatives_per_positive={ratio}): "
                f"{summary.n_positive} positives, {summary.n_negative} negatives")
    except Exception as exc:  # the phantom is optional here: fall back to noise scans
        from tests.conftest import make_tiny_luna
        shutil.rmtree(data_dir, ignore_errors=True)
        negatives = 30 if quick else 300
        make_tiny_luna(data_dir, n_series=n_series, shape_irc=(120, 256, 256), negatives_per_scan=negatives)
        return (f"tests.conftest.make_tiny_luna(n_series={n_series}, shape_irc=(120, 256, 256), "
                f"negatives_per_scan={negatives}) (phantom unavailable: {exc})")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def scan_int16_bytes(mhd_path: Path) -> int:
    dims = [int(v) for v in read_mhd_header(mhd_path)["DimSize"].split()]
    return int(np.prod(dims)) * 2


# --------------------------------------------------------------------------- cache fill, in a child

def _own_memory() -> int:
    info = psutil.Process().memory_full_info()
    return getattr(info, "pss", info.rss)


def child_fill(design: str, data_dir: Path, cache_dir: Path, workers: int) -> None:
    """Fill one cache from scratch; print JSON with the fill time and this process's memory
    after imports (the baseline the parent subtracts)."""
    if design == "ours":
        from luna.data.cache import CropCache, fill_cache
    else:
        import reference_cache
    baseline = _own_memory()
    candidates = get_candidate_info_list(data_dir)
    series_paths = find_series_files(data_dir)
    # Creating the reference's 64 shard databases is a one-off cost: timed apart from the fill.
    started = time.perf_counter()
    # The reference's crop rule, so that both designs hold the same samples.
    cache = CropCache(cache_dir, CropConfig(edge="shift", voxel_mm=0.0)) if design == "ours" else reference_cache.ReferenceCache(
        cache_dir, series_paths, design)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    if design == "ours":
        centers = defaultdict(list)
        for info in candidates:
            centers[info.series_uid].append(tuple(info.center_xyz))
        fill_cache(cache, series_paths, centers, workers)
    else:
        reference_cache.fill_reference(cache, candidates)
        cache.close()
    print(json.dumps({"seconds": time.perf_counter() - started, "setup": setup, "baseline": baseline}))


def measure_fill(design: str, data_dir: Path, cache_dir: Path, workers: int) -> dict:
    """Run :func:`child_fill` in a fresh process; poll the memory (PSS, so pages shared with
    forked workers count once) of its whole process tree."""
    command = [sys.executable, __file__, "--child-fill", design, str(data_dir), str(cache_dir), str(workers)]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    info = p.memory_full_info()
                    total += getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
            peak = max(peak, total)
            time.sleep(0.02)
        out = proc.stdout.read().decode()
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{err.read().decode()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]) | {"peak": peak}


# --------------------------------------------------------------------------- reads

def timed_reads(dataset, order: np.ndarray, min_seconds: float) -> float:
    """Samples per second reading ``dataset[i]`` in ``order`` (cycled) for at least min_seconds."""
    count, started = 0, time.perf_counter()
    while True:
        for ndx in order:
            dataset[int(ndx)]
            count += 1
            if count % 64 == 0 and time.perf_counter() - started >= min_seconds:
                return count / (time.perf_counter() - started)


def fresh_memory_ms(n_bytes: int, repeats: int = 5) -> float:
    """Median milliseconds to first-touch ``n_bytes`` of new anonymous memory: what every new
    batch buffer costs (in a VM that hands freed memory back to its host this is not small)."""
    import mmap
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with mmap.mmap(-1, n_bytes) as block:
            np.frombuffer(block, dtype=np.uint8)[::mmap.PAGESIZE] = 1
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


class NoCacheDataset:
    """Samples shaped like ours with no cache behind them: a freshly written float32 crop each.
    Its DataLoader rate is the ceiling any cache design can reach on this machine."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, ndx: int):
        import torch
        crop = torch.full((1, 32, 48, 48), float(ndx % 2000 - 1000))
        return crop, torch.tensor([1, 0]), "uid", torch.tensor([ndx, 0, 0])


def check_same_samples(ours, reference, lps: set[str], n: int = 64) -> None:
    """Both designs must hand out the same crops and centres, or the comparison means nothing.
    Checked on the scans stored in LPS order (``lps``): see :func:`reference_cache.stored_in_lps`."""
    on_lps = [ndx for ndx, info in enumerate(ours.candidates) if info.series_uid in lps]
    for ndx in (on_lps[k] for k in np.linspace(0, len(on_lps) - 1, min(n, len(on_lps))).astype(int)):
        a, b = ours[int(ndx)], reference[int(ndx)]
        if not (np.array_equal(a[0].numpy(), b[0].numpy()) and np.array_equal(a[1], b[1]) and a[2] == b[2]
                and np.array_equal(a[3].numpy(), b[3].numpy())):
            raise AssertionError(f"sample {ndx} differs between the two caches")


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~20 s smoke run on 2 scans")
    parser.add_argument("--repeats", type=int, default=None, help="best of N timings (default 3, quick 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default benchmarks/results/bench_cache[_quick].txt)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    parser.add_argument("--child-fill", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_fill:
        design, data_dir, cache_dir, workers = args.child_fill
        return child_fill(design, Path(data_dir), Path(cache_dir), int(workers))

    import torch

    import reference_cache
    from luna.train.throughput import measure_loader, time_train_steps
    from luna.data.dataset import LunaDataset

    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    read_seconds = 0.5 if quick else 2.0
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_cache-"))
    report = Report(f"bench_cache{'_quick' if quick else ''}", args.out)
    say, progress = report.say, report.progress
    try:
        data_dir = work / "data"
        say(f"data: {make_data(data_dir, quick)}")
        candidates = get_candidate_info_list(data_dir)
        series_paths = find_series_files(data_dir)
        largest_scan = max(scan_int16_bytes(p) for p in series_paths.values())
        per_scan = defaultdict(int)
        for info in candidates:
            per_scan[info.series_uid] += 1
        say(f"{len(candidates)} candidates in {len(series_paths)} scans; largest scan {largest_scan / 2**20:.1f} MiB "
            f"as int16; most candidates in a scan: {max(per_scan.values())} "
            f"({max(per_scan.values()) * INT16_CROP_BYTES / 2**20:.1f} MiB of int16 crops)")

        # --- 1. fill every cache from scratch in a fresh process
        say("\n== prepcache: fill from scratch, fresh process (peak = PSS of the process tree) ==")
        say(f"{'design':<52} {'seconds':>8} {'cand/s':>8} {'peak MiB':>9} {'imports MiB':>12} {'fill MiB':>9} "
            f"{'setup s':>8}")
        # Quick: skip the second fill of ours and the as-written reference (each costs seconds).
        fills = [("ours", 2), ("gzip", 0)] if quick else [("ours", 1), ("ours", 2), ("gzip", 0), ("as-written", 0)]
        cache_dirs = {}
        for design, workers in fills:
            progress(f"filling {design} with {workers} workers")
            cache_dir = work / f"cache-{design}-{workers}"
            shutil.rmtree(cache_dir, ignore_errors=True)
            result = measure_fill(design, data_dir, cache_dir, workers)
            cache_dirs.setdefault(design, cache_dir)
            label = DESIGNS[design] + (f", {workers} workers" if design == "ours" else ", 1 process")
            say(f"{label:<52} {result['seconds']:>8.1f} {len(candidates) / result['seconds']:>8.0f} "
                f"{result['peak'] / 2**20:>9.0f} {result['baseline'] / 2**20:>12.0f} "
                f"{(result['peak'] - result['baseline']) / 2**20:>9.0f} {result['setup']:>8.1f}")
        say(f"  for scale: largest scan {largest_scan / 2**20:.1f} MiB int16 ({largest_scan * 2 / 2**20:.1f} MiB "
            "as the reference's float32); 'fill MiB' = peak minus the same process after its imports "
            "(workers are forked: shared pages count once); 'setup s' = opening the cache, not in "
            "'seconds' (the reference creates 64 sqlite shards)")

        # --- 2. bytes per candidate
        say("\n== cache size ==")
        say(f"int16 crop: {INT16_CROP_BYTES:,} B; float32 crop: {INT16_CROP_BYTES * 2:,} B")
        sizes = {}
        for design, cache_dir in cache_dirs.items():
            sizes[design] = dir_bytes(cache_dir) / len(candidates)
            say(f"{DESIGNS[design]:<52} {sizes[design]:>10,.0f} B/candidate  -> full LUNA16 "
                f"({LUNA16_CANDIDATES:,} candidates): {sizes[design] * LUNA16_CANDIDATES / 1e9:,.1f} GB")

        # --- 3. warm reads, one process
        ours = LunaDataset(data_dir, val_stride=0, cache_dir=cache_dirs["ours"], candidate_info_list=candidates,
                           crop=CropConfig(edge="shift", voxel_mm=0.0))
        refs = {design: reference_cache.ReferenceDataset(
            reference_cache.ReferenceCache(cache_dirs[design], series_paths, design), candidates)
            for design in cache_dirs if design != "ours"}
        datasets = {"ours": ours, **refs}
        lps = {uid for uid, path in series_paths.items() if reference_cache.stored_in_lps(path)}
        for design, ref in refs.items():
            check_same_samples(ours, ref, lps)
        say(f"\nsame crops, labels, uids and centres from all caches (checked on 64 samples of the {len(lps)} "
            f"scans of {len(series_paths)} stored in LPS order; luna reorients the others, so there its crops "
            "are the reference's mirrored)")
        order = np.random.default_rng(0).permutation(len(candidates))
        progress("reads")
        say("\n== warm-cache random-order full samples, one process (1 core) ==")
        reads = defaultdict(float)
        for dataset in datasets.values():
            timed_reads(dataset, order, 0)  # one pass: page cache, open files, process memory
        # Repeats go round the designs, so a burst of load elsewhere hits them alike.
        for _ in range(repeats):
            for design, dataset in datasets.items():
                reads[design] = max(reads[design], timed_reads(dataset, order, read_seconds))
        for design in datasets:
            say(f"{DESIGNS[design]:<52} {reads[design]:>9,.0f} samples/s")
        say(f"ratio ours / gzip reference: {reads['ours'] / reads['gzip']:.1f}x (goal >= 10x)")
        if "as-written" in reads:
            say(f"ratio ours / as-written reference: {reads['ours'] / reads['as-written']:.1f}x")

        # --- 4. DataLoader
        progress("DataLoader")
        say("\n== DataLoader, batch 32, random order, steady state (samples/s) ==")
        batches = {"ours": 8 if quick else 100, "gzip": 3 if quick else 25, "as-written": 3 if quick else 25}
        say(f"{'design':<52} " + " ".join(f"{f'{w} workers':>10}" for w in (0, 1, 2)))
        batches["none"] = batches["ours"]
        with_ceiling = {**datasets, "none": NoCacheDataset(len(candidates))}
        loader = {design: [0.0, 0.0, 0.0] for design in with_ceiling}
        for design, dataset in with_ceiling.items():
            measure_loader(dataset, 32, 0, batches[design] // 2)  # warm this process's allocator
        for repeat in range(min(repeats, 2)):
            for slot, workers in enumerate((0, 1, 2)):
                for design, dataset in with_ceiling.items():
                    rate = measure_loader(dataset, 32, workers, batches[design], seed=repeat).samples_per_s
                    loader[design][slot] = max(loader[design][slot], rate)
        for design in with_ceiling:
            say(f"{DESIGNS[design]:<52} " + " ".join(f"{v:>10,.0f}" for v in loader[design]))
        batch_bytes = 32 * INT16_CROP_BYTES * 2
        fault_ms = fresh_memory_ms(batch_bytes)
        say(f"  first touch of a fresh {batch_bytes / 2**20:.1f} MiB batch buffer: {fault_ms:.1f} ms "
            f"({fault_ms * 1000 / (batch_bytes / 4096):.1f} us per 4 KiB page). Every batch is a new buffer "
            "(in shared memory with workers), so where this is slow it caps every design alike.")
        say("ratio ours / gzip: " + "  ".join(f"{w} workers {a / b:.1f}x"
                                               for w, a, b in zip((0, 1, 2), loader["ours"], loader["gzip"])))

        # --- 5. the model
        progress("timing the model")
        steps = 1 if quick else 5
        model_rate, description = time_train_steps(torch.device("cpu"), 32, steps=steps, warmup=1 if quick else 2)
        say(f"\n== model: {description}, batch 32, {steps} timed steps ==")
        say(f"training: {model_rate:,.1f} samples/s")
        say(f"ours / model: one-process reads {reads['ours'] / model_rate:,.0f}x, DataLoader best "
            f"{max(loader['ours']) / model_rate:,.0f}x (goal >= 20x)")
        say(f"gzip reference / model: one-process reads {reads['gzip'] / model_rate:,.1f}x, DataLoader best "
            f"{max(loader['gzip']) / model_rate:,.1f}x")
        say(f"\nload average at end: {load_average()}; "
            f"total {report.elapsed():.0f} s")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    report.write()


if __name__ == "__main__":
    main()

"""Reading a LUNA16-sized candidate list: wall time and peak memory of get_candidate_info_list.

Writes a candidates.csv with the real LUNA16 row count (551,065 rows over 888 series, 1,351
positives) and an annotations.csv (1,186 rows in 601 series), then times
``luna.candidates.get_candidate_info_list`` in a fresh process, twice over:

- a few scans on disk: nearly every row names a scan that is not there and is skipped
  (a user with one subset unpacked);
- every series on disk (888 tiny 8x8x8 scans), so all 551,065 rows are kept.

Peak RSS is compared with a process that only does the imports.

    .venv/bin/python benchmarks/bench_index.py            # writes results/bench_index.txt
    .venv/bin/python benchmarks/bench_index.py --quick    # a tenth of the rows
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import numpy as np  # noqa: E402

from bench_report import Report  # noqa: E402

LUNA16 = {"rows": 551_065, "series": 888, "positives": 1_351, "annotations": 1_186, "annotated_series": 601}
UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."


def write_csvs(root: Path, scale: float, seed: int = 0) -> tuple[list[str], int]:
    """candidates.csv and annotations.csv at ``scale`` x the LUNA16 counts; returns the uids and rows."""
    rng = np.random.default_rng(seed)
    n_series = max(3, round(LUNA16["series"] * scale))
    n_rows, n_pos = round(LUNA16["rows"] * scale), round(LUNA16["positives"] * scale)
    # Real uids end in ~30 digits; the last three keep them unique.
    uids = sorted(f"{UID_PREFIX}{''.join(map(str, rng.integers(0, 10, 27)))}{n:03d}" for n in range(n_series))
    # Annotations: a nodule centre and diameter in some scans; positives sit near them.
    annotated = rng.choice(len(uids), size=max(1, round(LUNA16["annotated_series"] * scale)), replace=False)
    ann_series = rng.choice(annotated, size=max(1, round(LUNA16["annotations"] * scale)))
    ann_xyz = rng.uniform(-200, 200, (len(ann_series), 3))
    ann_diameter = rng.uniform(3, 30, len(ann_series))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "annotations.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
        for s, xyz, d in zip(ann_series, ann_xyz, ann_diameter):
            writer.writerow([uids[s], *(f"{v:.8f}" for v in xyz), f"{d:.8f}"])

    series = np.sort(rng.integers(0, len(uids), n_rows))  # grouped by scan, as in LUNA16
    xyz = rng.uniform(-250, 250, (n_rows, 3)).round(2)
    label = np.zeros(n_rows, dtype=int)
    positives = rng.choice(n_rows, size=n_pos, replace=False)
    label[positives] = 1
    near = rng.integers(0, len(ann_series), n_pos)
    series[positives] = ann_series[near]
    xyz[positives] = (ann_xyz[near] + rng.uniform(-1, 1, (n_pos, 3))).round(2)
    with open(root / "candidates.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "class"])
        writer.writerows([uids[s], x, y, z, k] for s, (x, y, z), k in zip(series, xyz.tolist(), label))
    return uids, n_rows


def write_tiny_scans(root: Path, uids: list[str]) -> None:
    """An 8x8x8 int16 scan per uid, MetaImage header written by hand (fast for ~900 scans)."""
    for n, uid in enumerate(uids):
        folder = root / f"subset{n % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{uid}.raw").write_bytes(np.zeros(512, dtype="<i2").tobytes())
        (folder / f"{uid}.mhd").write_text(
            "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = -200 -200 -300\n"
            "ElementSpacing = 0.7 0.7 2.5\nDimSize = 8 8 8\nElementType = MET_SHORT\n"
            f"ElementDataFile = {uid}.raw\n")


def peak_rss_kib() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child
    forked from a big parent would report the parent's size."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(data_dir: str | None) -> None:
    """In a fresh process: import, then (unless data_dir is None) read the list; print JSON."""
    from luna.data.candidates import get_candidate_info_list
    imports_kib = peak_rss_kib()
    result = {"imports_kib": imports_kib}
    if data_dir is not None:
        started = time.perf_counter()
        infos = get_candidate_info_list(Path(data_dir))
        result |= {"seconds": time.perf_counter() - started, "kept": len(infos)}
    result["peak_kib"] = peak_rss_kib()
    print(json.dumps(result))


def run_child(data_dir: Path | None) -> dict:
    command = [sys.executable, __file__, "--child", str(data_dir) if data_dir else "-"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the LUNA16 row count")
    parser.add_argument("--repeats", type=int, default=None, help="fresh processes per case, best time (default 2, quick 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default benchmarks/results/bench_index[_quick].txt)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child(None if args.child == "-" else args.child)

    scale = 0.1 if args.quick else 1.0
    repeats = args.repeats or (1 if args.quick else 2)
    report = Report(f"bench_index{'_quick' if args.quick else ''}", args.out)
    say = report.say

    work = Path(tempfile.mkdtemp(prefix="bench_index-"))
    try:
        started = time.perf_counter()
        uids, n_rows = write_csvs(work, scale)
        size_mb = (work / "candidates.csv").stat().st_size / 1e6
        say(f"candidates.csv: {n_rows:,} rows, {len(uids)} series, {size_mb:.1f} MB "
            f"(written in {time.perf_counter() - started:.1f} s)")

        imports = min((run_child(None) for _ in range(repeats)), key=lambda r: r["peak_kib"])
        say(f"\nimports only (luna.candidates): peak RSS {imports['peak_kib'] / 1024:.0f} MiB")
        say(f"{'case':<44} {'kept rows':>10} {'seconds':>8} {'peak RSS MiB':>13} {'over imports':>13} "
            f"{'B/kept row':>10}")
        write_tiny_scans(work, uids[:3])
        few = work, "3 scans on disk (the rest skipped)"
        results = {}
        for case in ("few", "all"):
            if case == "all":
                write_tiny_scans(work, uids[3:])
            label = few[1] if case == "few" else f"all {len(uids)} scans on disk (8x8x8 each)"
            runs = [run_child(work) for _ in range(repeats)]
            best = min(runs, key=lambda r: r["seconds"])
            peak = max(r["peak_kib"] for r in runs)
            over = (peak - imports["peak_kib"]) * 1024
            results[case] = best | {"peak_kib": peak}
            say(f"{label:<44} {best['kept']:>10,} {best['seconds']:>8.2f} {peak / 1024:>13.0f} "
                f"{over / 2**20:>13.0f} {over / max(best['kept'], 1):>10.0f}")
        say(f"\nrows per second, all kept: {n_rows / results['all']['seconds']:,.0f}; "
            f"best of {repeats} fresh processes; total {time.perf_counter() - started:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.write()


if __name__ == "__main__":
    main()

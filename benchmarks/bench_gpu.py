"""The GPU benchmark: full-size synthetic scans, training samples/s, prediction candidates/s and
peak memory, the default recipe against the reference model in float32, in one run of <= 5 min.

    bash benchmarks/bench_gpu.sh            # on a machine with a CUDA GPU; writes results/bench_gpu.txt
    bash benchmarks/bench_gpu.sh --quick    # a smoke run (small scans), also runs on a CPU

What it does, on one device:
1. ``luna synth --size full`` scans (512 x 512 x 250-350, like LUNA16) into a temp dir, and
   ``luna prepcache`` of their candidates (CPU work, timed apart).
2. ``luna train`` for one fixed-size epoch with the default recipe (luna_twoscale, bf16 autocast,
   channels-last, augmentation on the device) and with the reference model in float32 (LunaModel,
   default memory format, no augmentation), the same data and batch size: training samples/s from
   each run's ``summary.csv`` and their ratio.
3. ``luna predict`` of the held-out scans with the defaults (8 views, suppression) and with the
   reference model's one view in float32: candidates/s, reading the scans included, and their ratio.
4. Peak device memory of each step (``torch.cuda.max_memory_allocated``) and this process's peak RSS.

Everything runs in this process through the apps' classes, so the memory figures are the apps'.
"""
from __future__ import annotations

import argparse
import csv
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import torch  # noqa: E402

from bench_report import Report, load_average  # noqa: E402
from luna.cli import app_class  # noqa: E402

# (scans, size, training samples, batch size): the full run fits 5 minutes on one H100/H200-class GPU
# with ~16 CPU cores, most of it making the full-size scans.
SETTINGS = {"full": (8, "full", 20_000, 64), "quick": (4, "small", 1_000, 32)}
REFERENCE = ["--model", "luna", "--precision", "fp32", "--channels-last", "off", "--no-augment",
             "--optimizer", "sgd", "--lr", "0.001", "--momentum", "0.99", "--lr-schedule", "constant"]


def run(command: str, argv: list[str]):
    """One app run in this process (the notebook helper's path), errors raised."""
    return app_class(command)(argv).main()


def peak_memory_mib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else float("nan")


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_rate(run_dir: Path) -> float:
    """Training samples/s of a run's single epoch, as the app measured it."""
    with open(run_dir / "summary.csv", newline="") as handle:
        return float(list(csv.DictReader(handle))[-1]["train_samples_per_s"])


def count_rows(path: Path) -> int:
    with open(path) as handle:
        return sum(1 for _ in handle) - 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small scans and a short epoch (a smoke run)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--workers", type=int, default=8, help="data loader and synth worker processes")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: results/bench_gpu[_quick].txt)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; run it on a GPU machine, or pass --device cpu", file=sys.stderr)
        return 1
    n_scans, size, samples, batch = SETTINGS["quick" if args.quick else "full"]
    report = Report("bench_gpu_quick" if args.quick else "bench_gpu", args.out)
    if args.device.startswith("cuda"):
        report.say(f"device: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
    work = Path(tempfile.mkdtemp(prefix="bench_gpu-"))
    try:
        data, cache, runs = work / "data", work / "cache", work / "runs"
        started = time.perf_counter()
        run("synth", ["--out", str(data), "--series", str(n_scans), "--size", size, "--seed", "0",
                      "--workers", str(args.workers)])
        synth_s = time.perf_counter() - started
        started = time.perf_counter()
        run("prepcache", ["--data-dir", str(data), "--cache-dir", str(cache), "--num-workers", str(args.workers)])
        prep_s = time.perf_counter() - started
        report.say(f"data: {n_scans} '{size}' scans made in {synth_s:.0f} s, crop cache filled in {prep_s:.0f} s")

        common = ["--data-dir", str(data), "--cache-dir", str(cache), "--runs-dir", str(runs), "--val-stride", "4",
                  "--epochs", "1", "--epoch-size", str(samples), "--batch-size", str(batch),
                  "--num-workers", str(args.workers), "--device", args.device]
        rates, memory = {}, {}
        for name, extra in (("default recipe", []), ("reference, fp32", REFERENCE)):
            reset_peak(args.device)
            run_dir = run("train", [*common, *extra, name.split(",")[0].replace(" ", "-")])
            rates[name], memory[name] = train_rate(run_dir), peak_memory_mib(args.device)
            report.say(f"train {name:<16} {rates[name]:8.1f} samples/s, peak device memory {memory[name]:8.0f} MiB")
            if name == "default recipe":
                default_run = run_dir
            else:
                reference_run = run_dir
        report.say(f"training: the default recipe at {rates['default recipe'] / rates['reference, fp32']:.2f}x "
                   "the reference's samples/s")

        predict_rates = {}
        for name, ckpt, extra in (("default (8 views)", default_run, []),
                                  ("reference, 1 view fp32", reference_run,
                                   ["--tta-views", "1", "--precision", "fp32", "--channels-last", "off"])):
            reset_peak(args.device)
            out = work / f"{ckpt.name}.csv"
            started = time.perf_counter()
            run("predict", ["--checkpoint", str(ckpt), "--out", str(out), "--device", args.device, *extra])
            seconds = time.perf_counter() - started
            predict_rates[name] = count_rows(out) / seconds
            report.say(f"predict {name:<24} {predict_rates[name]:8.1f} candidates/s ({count_rows(out)} in {seconds:.1f} s, "
                       f"scans read included), peak device memory {peak_memory_mib(args.device):8.0f} MiB")
        report.say(f"prediction: the defaults at {predict_rates['default (8 views)'] / predict_rates['reference, 1 view fp32']:.2f}x "
                   "the reference's one-view fp32 candidates/s")
        report.say(f"peak RSS of this process: {rss_mib():.0f} MiB; load average at end: {load_average()}; "
                   f"total {report.elapsed():.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A full-size scan from file to findings: `luna detect` on one 512 x 512 x ~300 scan, timed.

The goal is absolute (a full-size scan in <= 60 s on 2 CPU cores, peak RSS <= 4 GB), so this
measures seconds and bytes rather than ratios: the whole `luna detect` command on one scan file
of `luna synth --size full`, in a fresh process each round, with

- wall seconds of the whole command (Python and torch start-up, both models loaded, the scan
  read, resampled, segmented, grouped, its blobs found, classified with 8 views, the files written);
- the per-stage seconds the scan's JSON records (read, resample, segment, group, blobs, classify);
- CPU seconds (user + system) of the command: on a shared machine the wall time depends on the
  other work, the CPU seconds much less; on an idle machine wall ~ CPU / cores;
- the command's peak RSS.

    .venv/bin/python benchmarks/bench_detect.py --segmentation runs/seg/<run> --classifier runs/luna/<run>
        [--scan FILE.mhd] [--rounds 2]        # ~1-3 min a round; writes results/bench_detect.txt

Without ``--scan`` it makes one with `luna synth --out <tmp> --series 1 --seed 5 --size full`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_report import Report, load_average  # noqa: E402

LUNA = [sys.executable, "-m", "luna"]


# Runs a command and prints its wall and CPU seconds and peak RSS: in a process of its own, so
# that the peak is that command's alone (a process's children's peak never goes down).
_MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": done.returncode, "wall": time.perf_counter() - started, "cpu": usage.ru_utime + usage.ru_stime,
                  "rss_kib": usage.ru_maxrss, "stderr": done.stderr[-3000:]}))
"""


def run_once(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (GiB) of one command."""
    measured = json.loads(subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True,
                                         check=True).stdout)
    if measured["rc"] != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{measured['stderr']}")
    return measured["wall"], measured["cpu"], measured["rss_kib"] / 2 ** 20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segmentation", type=Path, required=True, help="a luna train-seg run or checkpoint")
    parser.add_argument("--classifier", type=Path, required=True, help="a luna train run or checkpoint")
    parser.add_argument("--scan", type=Path, default=None, help="a full-size .mhd (default: made with luna synth)")
    parser.add_argument("--rounds", type=int, default=2, help="times the command is run")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: results/bench_detect.txt)")
    args = parser.parse_args(argv)

    report = Report("bench_detect", args.out)
    with tempfile.TemporaryDirectory(prefix="bench_detect_") as tmp:
        scan = args.scan
        if scan is None:
            run_once([*LUNA, "synth", "--out", f"{tmp}/full", "--series", "1", "--seed", "5", "--size", "full"])
            (scan,) = Path(tmp, "full").rglob("*.mhd")
        import SimpleITK as sitk
        header = sitk.ReadImage(str(scan))
        report.say(f"scan: {scan.name}, {'x'.join(map(str, header.GetSize()))} voxels (x, y, z), spacing "
                   f"{', '.join(f'{v:.2f}' for v in header.GetSpacing())} mm")
        report.say(f"models: --segmentation {args.segmentation} --classifier {args.classifier}")
        out = Path(tmp, "results.csv")
        command = [*LUNA, "detect", "--segmentation", str(args.segmentation), "--classifier",
                   str(args.classifier), "--out", str(out), str(scan)]
        report.say(f"command: luna detect --segmentation SEG --classifier CLS --out results.csv {scan.name}")
        report.say("  each round beside the same with --max-blobs 0 (the segmentation's candidates only)")
        report.say()
        report.say("round  candidates     wall s  CPU s  peak RSS GiB  load at end   stages (s, from the scan's JSON)")
        walls: dict[str, list[float]] = {"default": [], "seg only": []}
        for round_ndx in range(1, args.rounds + 1):
            for label, extra in (("default", []), ("seg only", ["--max-blobs", "0"])):
                wall, cpu, rss = run_once(command + extra)
                walls[label].append(wall)
                (json_path,) = Path(tmp, "results_findings").glob("*.json")
                found = json.loads(json_path.read_text())
                stages = ", ".join(f"{k} {v:.1f}" for k, v in found["seconds"].items())
                report.say(f"{round_ndx:5d}  {label:12}  {wall:6.1f}  {cpu:5.1f}  {rss:12.2f}  {load_average():12}  "
                           f"{stages}; {len(found['findings'])} findings")
        ratio = sum(walls["default"]) / sum(walls["seg only"])
        report.say(f"wall time with the blobs / without: {ratio:.2f}x")
    report.say()
    report.say("goal: <= 60 s wall and <= 4 GiB peak RSS on 2 CPU cores")
    report.write()


if __name__ == "__main__":
    main()

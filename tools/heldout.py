"""Score a classifier run on the held-out sets of docs/results.md, making any set that is missing.

The held-out sets are new scans of synthetic seed 8 that no run trains or validates on, made at
LUNA16's resolution and at half of it, acquired as the training scans are and otherwise, with
other vessel trees (anat), and drawn by a second generator that shares no code with luna (other,
tools/other_phantoms.py); docs/results.md, "Held-out sets". This script makes each missing set
with the command the docs give, scores the run on it as the docs do (`luna predict`'s defaults,
then `luna evaluate` over the set's scans) and prints the table row: CPM per set, the mean of the
seven sets, anat, other, and the 95% intervals.

    .venv/bin/python tools/heldout.py runs/luna/<run> [--sets full h8 ...] [--data-root data]
        [--out-dir runs/luna/<run>/heldout]

Making the first eight sets took 7 minutes and 5 GB here, other 7 more minutes (two scans at a
time, 6.3 GB each), scoring the demo's run on the eight 15 minutes (2 cores shared with other
work; it printed the demo's row of docs/results.md to the digit). Every step is a `luna` command
(or a script of tools/), run as its own
process: what they write, they write atomically, and the first one to fail stops the script
with its own one-line error.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
LUNA = [sys.executable, "-m", "luna"]

# name -> (folder under --data-root, `luna synth` flags beyond --series/--seed; None: made by a tool,
# see make_set). The first seven make the "mean of 7" of docs/results.md; anat and other are kept
# apart from it, as the sets drawn unlike any training scan.
SETS: dict[str, tuple[str, list[str] | None]] = {
    "full": ("h8full", ["--size", "full"]),
    "fullv": ("h8fullv", ["--size", "full", "--acquisition", "varied"]),
    "fullacq": ("h8fullacq", ["--size", "full", "--acquisition", "shifted"]),
    "h8": ("h8", []),
    "shift": ("h8_shift", None),
    "acq": ("h8_acq_shifted", ["--acquisition", "shifted"]),
    "varied": ("h8_varied", ["--acquisition", "varied"]),
    "anat": ("h8anat", ["--size", "full", "--acquisition", "shifted-anatomy"]),
    "other": ("h8other", None),
}
SEVEN = ("full", "fullv", "fullacq", "h8", "shift", "acq", "varied")
MEAN_OF_SEVEN = "mean of 7"  # its column in the tables
SEED = 8


class StepFailed(Exception):
    """A command failed; the message is its last line of error output."""


def run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise StepFailed(lines[-1] if lines else f"{' '.join(command)} exited with {done.returncode}")


def make_set(name: str, data_root: Path, series: int) -> Path:
    """The set's folder, made first if it has no candidates file."""
    folder, flags = SETS[name]
    path = data_root / folder
    if (path / "candidates.csv").exists():
        return path
    print(f"making {name} in {path}", file=sys.stderr)
    if name == "shift":  # h8 as another scanner would show it
        run([sys.executable, str(TOOLS / "shift_scans.py"), str(make_set("h8", data_root, series)), str(path)])
    elif name == "other":  # drawn by a second generator that shares no code with luna synth
        run([sys.executable, str(TOOLS / "other_phantoms.py"), str(path), "--series", str(series),
             "--seed", str(SEED)])
    else:
        run([*LUNA, "synth", "--out", str(path), "--series", str(series), "--seed", str(SEED), *flags])
    return path


def eval_dir(out_dir: Path, folder: str) -> Path:
    """Where a set's evaluation (``luna evaluate --out-dir``) goes under a run's results folder."""
    return out_dir / f"eval_{folder}"


def mean_of_seven(cpm: dict[str, float]) -> float:
    """The docs' "mean of 7": the CPMs of the seven sets, averaged."""
    return sum(cpm[n] for n in SEVEN) / len(SEVEN)


def score_set(run_dir: Path, data_dir: Path, out_dir: Path) -> dict:
    """``luna predict`` then ``luna evaluate``; returns the FROC part of its metrics.json."""
    predictions = out_dir / f"{data_dir.name}.csv"
    run([*LUNA, "predict", "--checkpoint", str(run_dir), "--data-dir", str(data_dir), "--out", str(predictions)])
    evaluation = eval_dir(out_dir, data_dir.name)
    run([*LUNA, "evaluate", "--predictions", str(predictions), "--annotations", str(data_dir / "annotations.csv"),
         "--excluded", str(data_dir / "annotations_excluded.csv"), "--series-list", str(predictions),
         "--out-dir", str(evaluation)])
    return json.loads((evaluation / "metrics.json").read_text())["froc"]


def table(names: list[str], froc: dict[str, dict]) -> str:
    """Markdown: a header, the CPMs (with the mean of the seven when all were scored), the intervals."""
    columns = [n for n in names if n in SEVEN] + ([MEAN_OF_SEVEN] if set(SEVEN) <= set(names) else []) + \
        [n for n in names if n not in SEVEN]
    cpm = {n: f"{froc[n]['cpm']:.3f}" for n in names}
    interval = {n: "[{:.3f}, {:.3f}]".format(*froc[n]["cpm_ci"]) if froc[n].get("cpm_ci") else "" for n in names}
    if MEAN_OF_SEVEN in columns:
        cpm[MEAN_OF_SEVEN] = f"{mean_of_seven({n: froc[n]['cpm'] for n in SEVEN}):.3f}"
        interval[MEAN_OF_SEVEN] = ""
    return "\n".join(["| " + " | ".join(["", *columns]) + " |", "|" + "---|" * (len(columns) + 1),
                      "| " + " | ".join(["CPM", *(cpm[c] for c in columns)]) + " |",
                      "| " + " | ".join(["95% interval", *(interval[c] for c in columns)]) + " |"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a `luna train` run directory (or a checkpoint file)")
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS), help="which sets (default: all)")
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="where the sets' folders are made")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="results files and evaluations (default: RUN_DIR/heldout)")
    parser.add_argument("--series", type=int, default=8,
                        help="scans per set when a set is made (8: the docs' sets; fewer for a quick look)")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or (args.run_dir if args.run_dir.is_dir() else args.run_dir.parent) / "heldout"
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in SETS if n in args.sets]
    froc = {}
    try:
        for name in names:
            froc[name] = score_set(args.run_dir, make_set(name, args.data_root, args.series), out_dir)
            print(f"{name}: CPM {froc[name]['cpm']:.3f}", file=sys.stderr)
    except StepFailed as exc:
        print(f"heldout.py: error: {exc}", file=sys.stderr)
        return 1
    print(table(names, froc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

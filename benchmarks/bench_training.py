"""End-to-end training throughput: ours against a reference-style baseline, same data, one run.

Both designs train LunaModel over the full training split and validate every epoch, batch 32,
2 DataLoader workers, the same sample order, the same initial weights and the same optimiser
(the reference's SGD, lr 0.001, momentum 0.99, constant rate, no augmentation), so that the
only differences are the data and compute path:

- ours: a real ``python -m luna train`` run: int16 crops from our cache, bf16 autocast on
  the CPU, channels_last_3d (``--precision auto --channels-last auto``). Its epochs are timed
  by the app itself (``summary.csv``: train + validation + metrics, FROC and TensorBoard).
- baseline: the reference's design in a child of this script: float32 samples from the
  gzip/pickle diskcache of ``reference_cache.py``, float32 model, default memory format, run
  by our ``luna.train.engine`` loops with ``StepConfig(precision="fp32", channels_last=False)``.

Also: validation ROC AUC of both after the same epochs, the main training process's RSS per
epoch (it must stay flat), and one run with today's default recipe (``luna train`` with no
recipe flags: the default model, balanced sampling, augmentation, AdamW + cosine, crops at the
default voxel size), whose ratio to the baseline is the goal: >= 3x.

    .venv/bin/python benchmarks/bench_training.py            # ~6-9 min, writes results/bench_training.txt
    .venv/bin/python benchmarks/bench_training.py --quick    # ~1 min smoke run

Samples/s = (training + validation samples) / epoch seconds, epoch by epoch and over all
epochs; the machine may be shared, so the load average is recorded around every run.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from bench_report import Report, load_average  # noqa: E402

import reference_cache  # noqa: E402

# (scans, negatives per positive, val stride, epochs): a full epoch is ~1,300 samples (full)
# or ~230 (quick); "small" phantom scans carry 4-8 nodules each. The float32 baseline trains at
# ~15 samples/s on 2 shared cores, so this keeps the default run under ~10 minutes.
SETTINGS = {"full": (10, 20, 4, 3), "quick": (4, 8, 2, 3)}
BATCH_SIZE = 32
NUM_WORKERS = 2
# The reference's crop rule for both designs, so that their caches hold the same samples.
CROP_EDGE = "shift"
SEED = 0
# The reference's crops, optimiser and sampling (every candidate, none left out), for both
# designs (weight decay: the reference has none).
REFERENCE_RECIPE = ["--crop-edge", CROP_EDGE, "--crop-mm", "0", "--no-skip-excluded", "--model", "luna",
                    "--optimizer", "sgd", "--lr", "0.001", "--momentum", "0.99", "--weight-decay", "0",
                    "--lr-schedule", "constant", "--balanced", "0", "--no-augment"]
EPOCH_LINE = re.compile(r"Epoch (\d+) of (\d+)")


def load_line(when: str) -> str:
    return f"load average {when}: {load_average()}"


# --------------------------------------------------------------------------- running and watching a child

@dataclass
class Trace:
    """What a watched child did: its output, wall time and main-process RSS per epoch."""

    stdout: str
    stderr: str
    wall_s: float
    epoch_rss: dict[int, int] = field(default_factory=dict)  # epoch -> max RSS of the main process
    epoch_worker_rss: dict[int, int] = field(default_factory=dict)  # epoch -> max RSS of one worker
    load: str = ""


def watch(command: list[str]) -> Trace:
    """Run ``command``, polling its RSS every 0.2 s; epochs start at its ``Epoch N of M`` lines
    on stderr (both designs print them), so each RSS sample lands in the epoch it was taken in."""
    load = load_line("before")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        return _watch(proc, load)
    finally:
        if proc.poll() is None:  # interrupted: do not leave a training run behind
            proc.kill()
            proc.wait()


def _watch(proc: subprocess.Popen, load: str) -> Trace:
    out_lines: list[str] = []
    err_lines: list[str] = []
    epoch = [0]  # the current epoch, updated by the stderr reader

    def read_err() -> None:
        for line in proc.stderr:
            err_lines.append(line)
            match = EPOCH_LINE.search(line)
            if match:
                epoch[0] = int(match.group(1))
                print(f"    {time.strftime('%H:%M:%S')} epoch {epoch[0]} starts", flush=True)

    readers = [threading.Thread(target=read_err, daemon=True),
               threading.Thread(target=lambda: out_lines.extend(proc.stdout), daemon=True)]
    for reader in readers:
        reader.start()
    started = time.perf_counter()
    root = psutil.Process(proc.pid)
    trace = Trace("", "", 0.0)
    while proc.poll() is None:
        try:
            rss = root.memory_info().rss
            workers = [c.memory_info().rss for c in root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            rss, workers = 0, []
        if epoch[0]:
            trace.epoch_rss[epoch[0]] = max(trace.epoch_rss.get(epoch[0], 0), rss)
            trace.epoch_worker_rss[epoch[0]] = max(trace.epoch_worker_rss.get(epoch[0], 0), *workers, 0)
        time.sleep(0.2)
    trace.wall_s = time.perf_counter() - started
    for reader in readers:
        reader.join()
    trace.stdout, trace.stderr = "".join(out_lines), "".join(err_lines)
    trace.load = f"{load}; {load_line('after')}"
    if proc.returncode:
        raise RuntimeError(f"{' '.join(proc.args)} failed ({proc.returncode}):\n{trace.stderr[-3000:]}")
    return trace


@dataclass
class Epoch:
    """One epoch of one run, as both designs report it."""

    epoch: int
    train_samples: int
    val_samples: int
    seconds: float
    train_seconds: float
    trn_loss: float
    val_auc: float

    @property
    def samples_per_s(self) -> float:
        return (self.train_samples + self.val_samples) / self.seconds


# --------------------------------------------------------------------------- ours: the real app

def run_ours(work: Path, data_dir: Path, cache_dir: Path, comment: str, extra: list[str],
             epochs: int, val_stride: int) -> tuple[list[Epoch], Trace, list[str]]:
    """``python -m luna train`` with the benchmark's data flags plus ``extra``; its epochs
    come from the run's summary.csv."""
    from luna.runtime.rundir import read_summary

    runs_dir = work / "runs"
    flags = ["--data-dir", str(data_dir), "--cache-dir", str(cache_dir), "--runs-dir", str(runs_dir),
             "--tb-prefix", "bench", "--val-stride", str(val_stride), "--split", "scan",
             "--num-workers", str(NUM_WORKERS), "--batch-size", str(BATCH_SIZE), "--epochs", str(epochs),
             "--seed", str(SEED), "--device", "cpu", "--precision", "auto", "--channels-last", "auto",
             "--best-metric", "auc/roc", *extra, comment]
    trace = watch([sys.executable, "-m", "luna", "train", *flags])
    summary = next((runs_dir / "bench").glob(f"*-{comment}/summary.csv"))
    result, seen = [], 0
    for row in read_summary(summary):
        train = int(row["samples_seen"]) - seen
        seen = int(row["samples_seen"])
        result.append(Epoch(int(row["epoch"]), train, int(row["val_neg_count"]) + int(row["val_pos_count"]),
                            float(row["seconds"]), train / float(row["train_samples_per_s"]),
                            float(row["trn_loss/all"]), float(row["val_auc/roc"])))
    return result, trace, flags


# --------------------------------------------------------------------------- the baseline, in a child

def child_baseline(config: dict) -> None:
    """The reference's design: float32 samples from the gzip diskcache, float32 contiguous
    model, SGD; our engine's loops. Prints one JSON line per epoch on stdout."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from luna.data.candidates import get_candidate_info_list
    from luna.io.scans import find_series_files
    from luna.luna16.candidates import split_candidates
    from luna.runtime.distributed import seed_everything
    from luna.runtime.device import StepConfig
    from luna.train.engine import epoch_metrics, evaluate, train_one_epoch
    from luna.models.registry import build_model
    from luna.runtime.device import prepare_model

    data_dir, stride = Path(config["data_dir"]), config["val_stride"]
    # Seeded exactly as the app seeds before building its model: the same initial weights.
    seed_everything(SEED, 0)
    candidates = get_candidate_info_list(data_dir)
    cache = reference_cache.ReferenceCache(Path(config["cache_dir"]), find_series_files(data_dir), "gzip")
    train_ds = IndexedReferenceDataset(cache, split_candidates(candidates, stride, False, "scan"))
    val_ds = IndexedReferenceDataset(cache, split_candidates(candidates, stride, True, "scan"))
    # The app's sampler with one process: the same order, epoch by epoch, as ours.
    train_sampler = DistributedSampler(train_ds, num_replicas=1, rank=0, shuffle=True, seed=SEED)
    val_sampler = DistributedSampler(val_ds, num_replicas=1, rank=0, shuffle=False)
    # The reference's loader: no pinned memory on the CPU, default prefetch.
    train_loader = DataLoader(train_ds, batch_size=BATCH_SIZE, sampler=train_sampler, num_workers=NUM_WORKERS)
    val_loader = DataLoader(val_ds, batch_size=BATCH_SIZE, sampler=val_sampler, num_workers=NUM_WORKERS)
    device = torch.device("cpu")
    model = prepare_model(build_model({"name": "luna"}), device, channels_last=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.99)
    cfg = StepConfig(device, precision="fp32", channels_last=False)
    for epoch in range(1, config["epochs"] + 1):
        print(f"Epoch {epoch} of {config['epochs']}", file=sys.stderr, flush=True)
        train_sampler.set_epoch(epoch)
        started = time.monotonic()
        trn_t, _ = train_one_epoch(model, train_loader, optimizer, None, None, cfg, epoch)
        train_seconds = time.monotonic() - started
        val_t, _ = evaluate(model, val_loader, cfg, epoch)
        trn, val = epoch_metrics(trn_t), epoch_metrics(val_t)
        seconds = time.monotonic() - started
        print(json.dumps({"epoch": epoch, "train_samples": trn_t.shape[1], "val_samples": val_t.shape[1],
                          "seconds": seconds, "train_seconds": train_seconds, "trn_loss": trn["loss/all"],
                          "val_auc": val["auc/roc"]}), flush=True)


class IndexedReferenceDataset(reference_cache.ReferenceDataset):
    """The reference's sample plus its candidate index: the 5-tuple our engine's loops take."""

    def __getitem__(self, ndx: int):
        return (*super().__getitem__(ndx), ndx)


def run_baseline(data_dir: Path, cache_dir: Path, epochs: int, val_stride: int) -> tuple[list[Epoch], Trace]:
    config = {"data_dir": str(data_dir), "cache_dir": str(cache_dir), "epochs": epochs, "val_stride": val_stride}
    trace = watch([sys.executable, __file__, "--child-baseline", json.dumps(config)])
    rows = [json.loads(line) for line in trace.stdout.splitlines() if line.startswith("{")]
    return [Epoch(**row) for row in rows], trace


# --------------------------------------------------------------------------- data and caches (not timed)

def make_data(data_dir: Path, n_series: int, ratio: int) -> str:
    from luna.synth import make_dataset
    summary = make_dataset(data_dir, n_series=n_series, seed=SEED, size="small", negatives_per_positive=ratio,
                           workers=NUM_WORKERS)
    return (f"luna.synth.make_dataset(n_series={n_series}, seed={SEED}, size='small', "
            f"negatives_per_positive={ratio}): {summary.n_positive} positives, {summary.n_negative} negatives "
            f"({summary.seconds:.0f} s)")


def fill_caches(data_dir: Path, ours_dir: Path, ref_dir: Path) -> tuple[float, float]:
    """Fill our cache (2 workers, as training would) and the reference's (its prepcache, one
    process); return both wall times (ours: the reference's crop rule, as the reference had)."""
    from collections import defaultdict

    from luna.data.cache import CropCache, fill_cache
    from luna.data.candidates import get_candidate_info_list
    from luna.io.scans import find_series_files
    from luna.data.crops import CropConfig

    candidates = get_candidate_info_list(data_dir)
    series_paths = find_series_files(data_dir)
    centers = defaultdict(list)
    for info in candidates:  # entry rows in full-list order, as LunaDataset keys them
        centers[info.series_uid].append(tuple(info.center_xyz))
    started = time.perf_counter()
    fill_cache(CropCache(ours_dir, CropConfig(edge=CROP_EDGE, voxel_mm=0.0)), series_paths, centers, NUM_WORKERS)
    ours_s = time.perf_counter() - started
    # The default recipe's crops (its own crop rule and voxel size) sit beside them, also untimed.
    fill_cache(CropCache(ours_dir, CropConfig()), series_paths, centers, NUM_WORKERS)
    started = time.perf_counter()
    cache = reference_cache.ReferenceCache(ref_dir, series_paths, "gzip")
    reference_cache.fill_reference(cache, candidates)
    cache.close()
    return ours_s, time.perf_counter() - started


def check_same_samples(data_dir: Path, ours_dir: Path, ref_dir: Path, val_stride: int, n: int = 32) -> int:
    """Both designs must feed the same training samples in the same positions (same crop values,
    labels, uids and centres), or the comparison means nothing. Returns the samples checked
    (on scans stored in LPS order: see :func:`reference_cache.stored_in_lps`)."""
    import torch

    from luna.io.scans import find_series_files
    from luna.luna16.candidates import split_candidates
    from luna.data.crops import CropConfig
    from luna.data.dataset import LunaDataset

    ours = LunaDataset(data_dir, val_stride=val_stride, is_val=False, split="scan", cache_dir=ours_dir,
                       return_index=True, crop=CropConfig(edge=CROP_EDGE, voxel_mm=0.0), crop_dtype=torch.int16)
    series_paths = find_series_files(data_dir)
    ref = IndexedReferenceDataset(reference_cache.ReferenceCache(ref_dir, series_paths, "gzip"),
                                  split_candidates(ours.candidates, 0, False))
    lps = {uid for uid, path in series_paths.items() if reference_cache.stored_in_lps(path)}
    on_lps = [ndx for ndx, info in enumerate(ours.candidates) if info.series_uid in lps]
    picks = [on_lps[k] for k in np.linspace(0, len(on_lps) - 1, min(n, len(on_lps))).astype(int)]
    for ndx in picks:
        a, b = ours[int(ndx)], ref[int(ndx)]
        if not (torch.equal(a[0].float(), b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
                and torch.equal(a[3], b[3]) and a[4] == b[4]):
            raise AssertionError(f"training sample {ndx} differs between our cache and the reference's")
    ref.cache.close()
    return len(picks)


# --------------------------------------------------------------------------- report

def totals(epochs: list[Epoch]) -> tuple[float, float]:
    """(samples/s over all epochs, best epoch's samples/s)."""
    samples = sum(e.train_samples + e.val_samples for e in epochs)
    return samples / sum(e.seconds for e in epochs), max(e.samples_per_s for e in epochs)


def epoch_rows(label: str, epochs: list[Epoch], trace: Trace) -> list[str]:
    rows = []
    for e in epochs:
        rss = trace.epoch_rss.get(e.epoch, 0) / 2**20
        worker = trace.epoch_worker_rss.get(e.epoch, 0) / 2**20
        rows.append(f"{label:<44} {e.epoch:>2} {e.train_samples:>6} {e.val_samples:>5} {e.seconds:>8.1f} "
                    f"{e.train_samples / e.train_seconds:>9.1f} {e.samples_per_s:>9.1f} {e.trn_loss:>8.4f} "
                    f"{e.val_auc:>7.4f} {rss:>8.0f} {worker:>8.0f}")
    return rows


def rss_line(label: str, trace: Trace) -> str:
    """Max RSS per epoch, and its change from epoch 2 on (epoch 1 pays the allocator's and
    libraries' first-time growth; a leak shows as growth every epoch after it)."""
    rss = [trace.epoch_rss[k] / 2**20 for k in sorted(trace.epoch_rss)]
    line = f"{label}: max RSS per epoch {' / '.join(f'{v:.0f}' for v in rss)} MiB"
    if len(rss) >= 3:
        line += f"; epoch 2 -> {len(rss)}: {rss[-1] - rss[1]:+.0f} MiB ({(rss[-1] - rss[1]) / rss[1] * 100:+.1f}%)"
    return line + f"; epoch 1 -> {len(rss)}: {rss[-1] - rss[0]:+.0f} MiB"


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~1 min smoke run on 4 small scans")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every run (default 3)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default benchmarks/results/bench_training[_quick].txt)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    parser.add_argument("--child-baseline", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_baseline:
        return child_baseline(json.loads(args.child_baseline))
    # `timeout` and friends send SIGTERM: unwind, so the running child is killed and the
    # work directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


    from luna.data.candidates import get_candidate_info_list
    from luna.luna16.candidates import split_candidates

    quick = args.quick
    n_series, ratio, val_stride, epochs = SETTINGS["quick" if quick else "full"]
    epochs = args.epochs or epochs
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_training-"))
    report = Report(f"bench_training{'_quick' if quick else ''}", args.out)
    say, progress = report.say, report.progress
    try:
        data_dir, ours_dir, ref_dir = work / "data", work / "cache-ours", work / "cache-reference"
        progress("writing the phantom scans")
        say(f"data: {make_data(data_dir, n_series, ratio)}")
        candidates = get_candidate_info_list(data_dir)
        train = split_candidates(candidates, val_stride, False, "scan")
        val = split_candidates(candidates, val_stride, True, "scan")
        say(f"split by scan, --val-stride {val_stride}: {len(train)} training samples "
            f"({sum(c.is_nodule for c in train)} nodules) and {len(val)} validation samples "
            f"({sum(c.is_nodule for c in val)} nodules) per epoch; batch {BATCH_SIZE}, {NUM_WORKERS} workers, "
            f"seed {SEED}, {epochs} epochs per run")

        progress("filling both caches")
        ours_fill, ref_fill = fill_caches(data_dir, ours_dir, ref_dir)
        say(f"caches filled before timing (not in any figure below): ours {ours_fill:.1f} s ({NUM_WORKERS} workers), "
            f"reference gzip diskcache {ref_fill:.1f} s (its prepcache, 1 process)")
        say(f"same training samples from both caches in the same positions (checked "
            f"{check_same_samples(data_dir, ours_dir, ref_dir, val_stride)} samples of the scans stored in LPS "
            "order; on the others luna's crops are the reference's mirrored, since luna reorients scans)")

        progress("ours, reference recipe")
        ours, ours_trace, ours_flags = run_ours(work, data_dir, ours_dir, "reference-recipe", REFERENCE_RECIPE,
                                                epochs, val_stride)
        progress("baseline")
        base, base_trace = run_baseline(data_dir, ref_dir, epochs, val_stride)
        progress("ours, default recipe")
        default, default_trace, _ = run_ours(work, data_dir, ours_dir, "default-recipe", [], epochs, val_stride)

        runs = [("ours, reference recipe", ours, ours_trace),
                ("baseline (reference design)", base, base_trace),
                ("ours, default recipe", default, default_trace)]
        say("\n== runs ==")
        say("ours, reference recipe: python -m luna train " + " ".join(
            f if not f.startswith("/") else "<" + Path(f).name + ">" for f in ours_flags))
        say("  = int16 crops (luna.cache), bf16 autocast, channels_last_3d, SGD lr 0.001 momentum 0.99, "
            "constant rate, natural order, no augmentation; epoch seconds from its summary.csv (training, "
            "validation, metrics, FROC, TensorBoard)")
        say("baseline: this script's child: float32 crops from reference_cache.py's gzip/pickle diskcache "
            "(2 workers, default prefetch), float32 model, contiguous memory format, the same SGD, sampler, seed "
            "and initial weights; luna.train.engine loops with StepConfig(precision='fp32', channels_last=False); "
            "epoch seconds = training + validation + metrics")
        from luna.data.crops import CROP_VOXEL_MM
        from luna.train.config import TrainConfig
        say(f"ours, default recipe: the same command without the recipe flags: {TrainConfig.model}, balanced 1:1 "
            f"sampling, augmentation, AdamW + cosine schedule, centred crops at {CROP_VOXEL_MM:g} mm voxels "
            "(today's defaults)")
        for label, _, trace in runs:
            say(f"  {label}: process wall {trace.wall_s:.0f} s; {trace.load}")

        say("\n== epochs (samples/s = (train + val samples) / epoch seconds; RSS = max in the epoch, MiB) ==")
        say(f"{'run':<44} {'ep':>2} {'train':>6} {'val':>5} {'seconds':>8} {'trn smp/s':>9} {'samples/s':>9} "
            f"{'trn loss':>8} {'val AUC':>7} {'main RSS':>8} {'worker':>8}")
        for label, result, trace in runs:
            for row in epoch_rows(label, result, trace):
                say(row)

        say("\n== end-to-end throughput, train + validation ==")
        (ours_all, ours_best), (base_all, base_best) = totals(ours), totals(base)
        default_all, default_best = totals(default)
        say(f"ours, reference recipe:      {ours_all:8.1f} samples/s over {epochs} epochs (best epoch {ours_best:.1f})")
        say(f"baseline (reference design): {base_all:8.1f} samples/s over {epochs} epochs (best epoch {base_best:.1f})")
        say(f"ours, default recipe:        {default_all:8.1f} samples/s over {epochs} epochs")
        say(f"ratio ours, reference recipe / baseline: {ours_all / base_all:.2f}x over all epochs, "
            f"{ours_best / base_best:.2f}x best epoch against best epoch (same model, same numerics)")
        say(f"ratio ours, default recipe / baseline: {default_all / base_all:.2f}x over all epochs, "
            f"{default_best / base_best:.2f}x best epoch against best epoch (goal >= 3x)")

        say(f"\n== validation ROC AUC after epoch 1..{epochs} (same seed, order and initial weights) ==")
        for label, result, _ in runs:
            say(f"{label:<30} " + "  ".join(f"{e.val_auc:.4f}" for e in result))
        say(f"last epoch: ours {ours[-1].val_auc:.4f} vs baseline {base[-1].val_auc:.4f} "
            f"(difference {ours[-1].val_auc - base[-1].val_auc:+.4f})")

        say("\n== training RSS (main process; workers are restarted every epoch) ==")
        say(rss_line("ours, reference recipe", ours_trace))
        say(rss_line("ours, default recipe", default_trace))
        say(rss_line("baseline", base_trace))
        say(f"\n{load_line('at end')}; total {report.elapsed():.0f} s")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    report.write()


if __name__ == "__main__":
    main()

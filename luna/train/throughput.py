"""How fast the data loader feeds the model, and the largest batch a device takes.

The reference chapter leaves this as an exercise: time the DataLoader with ``num_workers`` 0,
1, 2, ... and find the largest batch the machine takes. ``luna bench-loader`` runs these
helpers on a user's data; ``benchmarks/bench_cache.py`` uses them too.
"""
from __future__ import annotations

import gc
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from luna.models.classifier import LunaModel
from luna.runtime.device import StepConfig, prepare_model, resolve_performance
from luna.train.session import is_out_of_memory

log = logging.getLogger(__name__)

# On the CPU an allocation that does not fit is usually not an error but the kernel's OOM
# killer (Linux overcommits), so the search is capped, and it also stops before a step that
# would need more than this share of the memory available.
CPU_BATCH_CAP = 1024
CPU_MEMORY_SHARE = 0.7


@dataclass
class LoaderResult:
    """One timed DataLoader run."""

    num_workers: int
    batch_size: int
    batches: int
    seconds: float
    first_batch_s: float

    @property
    def samples_per_s(self) -> float:
        return self.batches * self.batch_size / max(self.seconds, 1e-9)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_loader(dataset: Dataset, batch_size: int, num_workers: int, batches: int,
                   device: torch.device = torch.device("cpu"), seed: int = 0) -> LoaderResult:
    """Time ``batches`` random-order batches of a DataLoader, after it has warmed up.

    The first ``max(1, num_workers)`` batches are not timed: they include starting the workers,
    which a training epoch pays once. Each batch's crops are copied to ``device`` as training does.

    Args:
        dataset: any map-style dataset whose samples start with the crop tensor.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0: in this process).
        batches: batches to time.
        device: where batches go (pinned memory and non-blocking copies on CUDA).
        seed: the sample order; the same seed gives the same order for every dataset of that size.

    Returns:
        The timing; ``samples_per_s`` is the steady-state throughput.
    """
    warmup = max(1, num_workers)
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, replacement=True, num_samples=(warmup + batches) * batch_size,
                            generator=generator)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=True)
    started = time.perf_counter()
    first_batch_s = timed_from = 0.0
    for ndx, batch in enumerate(loader):
        batch[0].to(device, non_blocking=True)
        if ndx == 0:
            first_batch_s = time.perf_counter() - started
        if ndx == warmup - 1:
            _synchronize(device)
            timed_from = time.perf_counter()
    _synchronize(device)
    seconds = time.perf_counter() - timed_from
    return LoaderResult(num_workers, batch_size, batches, seconds, first_batch_s)


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch_size: int,
                cfg: StepConfig, crop_shape_irc: Sequence[int]) -> None:
    # HU-like input: the tail BatchNorm sees the value range it sees in training.
    x = cfg.to_device(torch.randn(batch_size, 1, *crop_shape_irc) * 400 - 300)
    labels = torch.randint(0, 2, (batch_size,), device=cfg.device)
    with cfg.autocast():
        logits, _ = model(x)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def make_training_step(device: torch.device, precision: str = "auto", channels_last: str = "auto"):
    """LunaModel, its SGD optimiser (the reference's) and the speed settings training would pick.

    Returns:
        ``(step(batch_size), description)``: ``step`` runs one forward+backward+update.
    """
    perf = resolve_performance(precision, channels_last, device)
    model = prepare_model(LunaModel(), device, perf.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99)
    cfg = StepConfig(device, perf.precision, perf.channels_last)
    shape = model.config["crop_shape_irc"]

    def step(batch_size: int) -> None:
        _train_step(model, optimizer, batch_size, cfg, shape)

    channels = "channels_last_3d" if perf.channels_last else "contiguous"
    return step, f"LunaModel, SGD, {perf.precision} autocast, {channels}, {device}"


def time_train_steps(device: torch.device, batch_size: int = 32, steps: int = 5, warmup: int = 2,
                     precision: str = "auto", channels_last: str = "auto") -> tuple[float, str]:
    """Training samples per second of LunaModel (forward, backward, optimiser step).

    Returns:
        ``(samples_per_s, description of the settings)``.
    """
    step, description = make_training_step(device, precision, channels_last)
    for _ in range(warmup):
        step(batch_size)
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step(batch_size)
    _synchronize(device)
    return steps * batch_size / (time.perf_counter() - started), description


def _free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _available_memory_bytes() -> int:
    """MemAvailable (Linux), else free physical memory: what a new allocation can get."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux (bytes on macOS, where this is only a rough guard).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1024 if sys.platform != "darwin" else 1)


def find_max_batch(device: torch.device, start: int = 8, cap: int | None = None,
                   precision: str = "auto", channels_last: str = "auto") -> tuple[int, list[tuple[int, float]], str]:
    """Double the batch size until a training step no longer fits.

    Args:
        device: where to try.
        start: first batch size.
        cap: largest size to try (default :data:`CPU_BATCH_CAP` on the CPU, none on a GPU).
        precision, channels_last: as the training flags.

    Returns:
        ``(largest size that ran, [(size, seconds per step), ...], why the search stopped)``;
        the largest is 0 when not even ``start`` fits.
    """
    if cap is None and device.type == "cpu":
        cap = CPU_BATCH_CAP
    start = min(start, cap) if cap is not None else start
    step, description = make_training_step(device, precision, channels_last)
    log.info("Finding the largest batch for %s", description)
    tried: list[tuple[int, float]] = []
    largest, batch_size = 0, start
    rss_before = _max_rss_bytes()
    while True:
        if cap is not None and batch_size > cap:
            reason = f"reached the cap of {cap}" + ("; on the CPU the limit is RAM and time, not an error"
                                                    if device.type == "cpu" else "")
            break
        if device.type == "cpu" and largest:
            # Peak memory grows linearly with the batch: predict the next step from the last.
            per_sample = max(_max_rss_bytes() - rss_before, 0) / largest
            needed, available = per_sample * batch_size, _available_memory_bytes()
            if needed > CPU_MEMORY_SHARE * available:
                reason = (f"stopped before {batch_size}: it would need ~{needed / 2**30:.1f} GiB "
                          f"of the {available / 2**30:.1f} GiB available")
                break
        failed = ""
        try:
            started = time.perf_counter()
            step(batch_size)
            _synchronize(device)
            tried.append((batch_size, time.perf_counter() - started))
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(exc) and not largest:
                raise
            failed = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if failed:
            # Outside the except block: the traceback (and the tensors its frames hold) is gone.
            _free_device_memory(device)
            reason = f"batch {batch_size} failed: {failed}"
            break
        largest = batch_size
        log.info("Batch %d fits (%.2f s per step)", batch_size, tried[-1][1])
        batch_size *= 2
    return largest, tried, reason


def format_table(results: Sequence[LoaderResult], n_samples: int, device: torch.device) -> str:
    """The throughput table printed by the app."""
    lines = [f"DataLoader throughput, warm crop cache, random order, {n_samples} candidates, "
             f"batches copied to {device}, {os.cpu_count()} CPUs",
             f"{'workers':>7} {'batch':>6} {'batches':>8} {'samples/s':>10} {'batches/s':>10} {'first batch s':>14}"]
    for r in results:
        lines.append(f"{r.num_workers:>7} {r.batch_size:>6} {r.batches:>8} {r.samples_per_s:>10.0f} "
                     f"{r.samples_per_s / r.batch_size:>10.1f} {r.first_batch_s:>14.3f}")
    return "\n".join(lines)


def format_max_batch(largest: int, tried: Sequence[tuple[int, float]], reason: str, device: torch.device) -> str:
    """The --find-max-batch report printed by the app."""
    lines = [f"Largest LunaModel training batch on {device}: {largest} ({reason})",
             "(one step per size, timed with its first-call overhead)",
             f"{'batch':>7} {'s/step':>8} {'samples/s':>10}"]
    lines += [f"{size:>7} {seconds:>8.3f} {size / seconds:>10.1f}" for size, seconds in tried]
    return "\n".join(lines)

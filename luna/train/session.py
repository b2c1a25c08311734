"""What every trainer does around its epochs: naming (or finding) its run, joining the process
group and leaving it, and turning out-of-memory into one line."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Callable

import torch

from luna.errors import DataError, LunaError
from luna.luna16.paths import RUN_META_NAME
from luna.runtime.distributed import DistContext, barrier, cleanup_distributed, init_distributed
from luna.runtime.rundir import read_run_meta


def run_names(resume: Path | None, runs_dir: Path, tb_prefix: str, comment: str) -> tuple[Path, str, str]:
    """``(TensorBoard dir, run name, comment)``: a new run's, or those of the run ``resume`` continues.

    Raises:
        DataError: ``resume`` is not a run directory.
    """
    if resume:
        meta = read_run_meta(resume)
        if meta is None:
            raise DataError(f"--resume {resume}: not a luna run directory (no {RUN_META_NAME})")
        return Path(meta["tb_dir"]), meta["run_name"], meta["comment"]
    return Path(runs_dir) / tb_prefix, datetime.datetime.now().strftime("%Y-%m-%d_%H.%M.%S"), comment


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` is an allocation failing: CUDA raises OutOfMemoryError, the CPU allocator a
    RuntimeError ("can't allocate memory", or "not enough memory: you tried to allocate")."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "allocate" in text)


def out_of_memory(exc: BaseException, device: torch.device, batch_size: int) -> LunaError | None:
    """One line suggesting half the batch when ``exc`` is running out of memory; None otherwise."""
    if not is_out_of_memory(exc):
        return None
    return LunaError(f"out of memory on {device} at --batch-size {batch_size}; "
                     f"try a smaller one, e.g. --batch-size {max(batch_size // 2, 1)}")


def run_session(device: str, batch_size: int, train: Callable[[DistContext], Path]) -> Path:
    """Join the process group (one process or many), run ``train(ctx)`` and leave the group.

    Every rank waits for the others before leaving: a peer that tears its group down early can
    make Gloo abort the rest at exit. Running out of memory becomes one line with a smaller batch.
    """
    ctx = init_distributed(device)
    try:
        run_dir = train(ctx)
        barrier(ctx)
        return run_dir
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
        error = out_of_memory(exc, ctx.device, batch_size)
        if error is None:
            raise
        raise error from exc
    finally:
        cleanup_distributed()

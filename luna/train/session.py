"""What every trainer does around its epochs: naming (or finding) its run, and turning
out-of-memory into one line."""
from __future__ import annotations

import datetime
from pathlib import Path

import torch

from luna.errors import DataError, LunaError
from luna.luna16.paths import RUN_META_NAME
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


def out_of_memory(exc: BaseException, device: torch.device, batch_size: int) -> LunaError | None:
    """One line suggesting half the batch when ``exc`` is running out of memory; None otherwise.

    CUDA raises OutOfMemoryError; the CPU allocator a RuntimeError ("can't allocate").
    """
    if not isinstance(exc, torch.OutOfMemoryError) and not (
            isinstance(exc, RuntimeError) and ("allocate" in str(exc) or "out of memory" in str(exc))):
        return None
    return LunaError(f"out of memory on {device} at --batch-size {batch_size}; "
                     f"try a smaller one, e.g. --batch-size {max(batch_size // 2, 1)}")

"""luna.train.session: what both trainers do around their epochs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from luna.errors import DataError, LunaError
from luna.train.session import is_out_of_memory, out_of_memory, run_names, run_session


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_out_of_memory_suggests_half_the_batch():
    error = out_of_memory(RuntimeError("can't allocate memory"), torch.device("cpu"), 33)
    assert isinstance(error, LunaError) and "--batch-size 33" in str(error) and "--batch-size 16" in str(error)
    assert out_of_memory(RuntimeError("shape mismatch"), torch.device("cpu"), 33) is None


def test_run_session_returns_what_training_returns(tmp_path):
    seen = []

    def train(ctx):
        seen.append(ctx.world_size)
        return tmp_path

    assert run_session("cpu", 8, train) == tmp_path and seen == [1]
    assert not dist.is_initialized()


def test_run_session_turns_out_of_memory_into_one_line_and_lets_other_errors_through():
    def starved(ctx):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1")

    with pytest.raises(LunaError, match=r"out of memory on cpu at --batch-size 8; .*--batch-size 4"):
        run_session("cpu", 8, starved)

    def broken(ctx):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_session("cpu", 8, broken)
    assert not dist.is_initialized()


def test_run_names_of_a_new_run_and_of_a_directory_that_is_no_run(tmp_path):
    tb_dir, run_name, comment = run_names(None, tmp_path, "luna", "demo")
    assert tb_dir == Path(tmp_path) / "luna" and comment == "demo" and len(run_name) == len("2026-12-07_15.00.00")
    with pytest.raises(DataError, match="not a luna run directory"):
        run_names(tmp_path, tmp_path, "luna", "demo")

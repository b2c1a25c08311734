"""Distributed helpers: a real 2-process Gloo run, and the single-process defaults."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from luna.runtime.device import resolve_device
from luna.runtime.distributed import DistContext, all_reduce_sum, barrier, broadcast_object, cleanup_distributed, first_occurrence_mask, gather_per_sample, init_distributed, seed_everything
from luna.errors import UsageError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

# Each rank holds rank + 2 samples of float32 metrics and int64 indices, so lengths differ;
# rank 1 also holds an empty bool tensor. A DistributedSampler over 5 items pads to 3 + 3.
WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from torch.utils.data import DistributedSampler
    from luna.runtime.distributed import all_reduce_sum, barrier, broadcast_object, cleanup_distributed, first_occurrence_mask, gather_per_sample, init_distributed

    ctx = init_distributed("cpu")
    n = ctx.rank + 2
    metrics = torch.stack([torch.full((n,), float(ctx.rank)), torch.arange(n, dtype=torch.float32) + 0.5])
    indices = (torch.arange(n, dtype=torch.int64) + 100 * ctx.rank).unsqueeze(0)
    flags = torch.ones((1, 2), dtype=torch.bool) if ctx.rank == 0 else torch.zeros((1, 0), dtype=torch.bool)
    gathered = gather_per_sample(metrics, ctx)
    gathered_idx = gather_per_sample(indices, ctx)
    gathered_flags = gather_per_sample(flags, ctx)

    sampler = DistributedSampler(range(5), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False)
    local = torch.tensor(list(sampler), dtype=torch.int64).unsqueeze(0)
    sampled = gather_per_sample(local, ctx)[0]
    unique = sampled[first_occurrence_mask(sampled)]

    total = all_reduce_sum(torch.tensor([n], dtype=torch.int64), ctx)
    message = broadcast_object({"run": "abc"} if ctx.is_primary else None, ctx)
    barrier(ctx)
    result = {
        "rank": ctx.rank, "world_size": ctx.world_size, "device": str(ctx.device),
        "metrics": gathered.tolist(), "metrics_dtype": str(gathered.dtype),
        "indices": gathered_idx.tolist(), "indices_dtype": str(gathered_idx.dtype),
        "flags": gathered_flags.tolist(), "flags_dtype": str(gathered_flags.dtype),
        "sampled": sampled.tolist(), "unique": sorted(unique.tolist()),
        "total": total.tolist(), "message": message,
    }
    with open(f"{sys.argv[1]}/rank{ctx.rank}.json", "w") as handle:
        json.dump(result, handle)
    cleanup_distributed()
""")


@pytest.fixture
def single_process(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


def test_two_real_processes_gather_every_sample_once_in_rank_order(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, result in enumerate(results):
        assert (result["rank"], result["world_size"], result["device"]) == (rank, 2, "cpu")
        # Rank 0's 2 columns, then rank 1's 3: every sample exactly once, in rank order.
        assert result["metrics"] == [[0.0, 0.0, 1.0, 1.0, 1.0], [0.5, 1.5, 0.5, 1.5, 2.5]]
        assert result["metrics_dtype"] == "torch.float32"
        assert result["indices"] == [[0, 1, 100, 101, 102]]
        assert result["indices_dtype"] == "torch.int64"
        assert result["flags"] == [[True, True]] and result["flags_dtype"] == "torch.bool"
        assert result["sampled"] == [0, 2, 4, 1, 3, 0]  # sampler padding repeats sample 0
        assert result["unique"] == [0, 1, 2, 3, 4]
        assert result["total"] == [5]
        assert result["message"] == {"run": "abc"}


def test_single_process_defaults(single_process):
    ctx = init_distributed("cpu")
    assert ctx == DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    assert ctx.is_primary and not ctx.is_distributed
    values = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert gather_per_sample(values, ctx) is values
    assert all_reduce_sum(values, ctx) is values
    assert broadcast_object({"a": 1}, ctx) == {"a": 1}
    barrier(ctx)
    cleanup_distributed()  # nothing joined: must not fail


def test_auto_device_without_cuda_is_cpu(single_process):
    if torch.cuda.is_available():
        assert init_distributed("auto").device == torch.device("cuda", 0)
    else:
        assert init_distributed("auto").device == torch.device("cpu")


def test_non_primary_rank_context():
    ctx = DistContext(rank=1, local_rank=1, world_size=2, device=torch.device("cpu"))
    assert not ctx.is_primary and ctx.is_distributed


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cpu:1", "", "tpu", "cuda:-1"])
def test_bad_device_string_is_usage_error(single_process, bad):
    with pytest.raises(UsageError, match="--device must be"):
        init_distributed(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_asked_without_cuda_is_usage_error(single_process, device):
    with pytest.raises(UsageError, match="CUDA is not available"):
        init_distributed(device)


def test_mps_asked_without_mps_is_usage_error():
    if torch.backends.mps.is_available():
        assert resolve_device("mps") == torch.device("mps")
    else:
        with pytest.raises(UsageError, match="MPS is not available"):
            resolve_device("mps")


@pytest.mark.parametrize("name, value", [("WORLD_SIZE", "two"), ("RANK", "5")])
def test_bad_torchrun_environment_is_usage_error(single_process, monkeypatch, name, value):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match=name):
        init_distributed("cpu")


def test_gather_rejects_non_2d():
    with pytest.raises(ValueError, match=r"\(K, n\)"):
        gather_per_sample(torch.zeros(3), DistContext())


def test_first_occurrence_mask_keeps_first_of_each_index():
    indices = torch.tensor([4, 0, 2, 4, 1, 0, 3])
    assert first_occurrence_mask(indices).tolist() == [True, True, True, False, True, False, True]


def test_seed_everything_repeats_draws_and_offsets_by_rank():
    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    assert seed_everything(7) == 7
    first = draws()
    seed_everything(7)
    assert draws() == first
    assert seed_everything(7, rank=1) == 8
    assert draws() != first

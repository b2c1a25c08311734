"""One code path for one process or many: torchrun's environment, devices, collectives.

Training always goes through a :class:`DistContext`. Started plainly it describes a single
process (rank 0 of 1) and every collective here is a no-op that returns its input; started by
``torchrun --nproc_per_node=N`` it describes one of N processes joined in a process group
(NCCL between GPUs, Gloo on CPUs). Callers never branch on "distributed or not" beyond
``ctx.is_primary`` for work only one process should do (logging, TensorBoard, checkpoints).
"""
from __future__ import annotations

import gc
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from luna.errors import UsageError
from luna.runtime.device import resolve_device

log = logging.getLogger(__name__)

# dtypes gather_per_sample can carry; a rank sends the position of its dtype so that a
# mismatch between ranks is an error instead of silently reinterpreted bytes.
_GATHER_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                  torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the training processes.

    Args:
        rank: this process's index among all processes (0 .. world_size - 1).
        local_rank: its index on this machine; picks the GPU.
        world_size: how many processes train together.
        device: the device this process computes on.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_primary(self) -> bool:
        """True for the one process that logs, writes TensorBoard and saves checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when other processes take part and collectives must really communicate."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"environment variable {name}={text!r} is not an integer") from None


def launched_world() -> tuple[int, int]:
    """``(rank, world size)`` that torchrun gave this process, without joining any group; ``(0, 1)``
    when it was started plainly."""
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)


def init_distributed(device_arg: str = "auto") -> DistContext:
    """Read torchrun's environment, pick the device and join the process group if there is one.

    Args:
        device_arg: the ``--device`` flag (see :func:`resolve_device`).

    Returns:
        This process's context; without torchrun, rank 0 of a world of 1.

    Raises:
        UsageError: bad device value, unavailable device, or malformed torchrun variables.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise UsageError(f"inconsistent torchrun environment: RANK={rank}, LOCAL_RANK={local_rank}, "
                         f"WORLD_SIZE={world_size}")
    device = resolve_device(device_arg, local_rank, world_size)
    if device.type == "cuda":
        # Before the process group: NCCL and later allocations default to the current GPU.
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        options: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **options)
        log.info("Joined process group: rank %d of %d (%s) on %s", rank, world_size, backend, device)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        # A DDP wrapper left in a reference cycle still holds the group; collect it now, while
        # the interpreter is whole, rather than during its shutdown (where Gloo's worker
        # threads can abort the process).
        gc.collect()
        dist.destroy_process_group()


def _comm_device(ctx: DistContext) -> torch.device:
    """Where tensors must be for the backend: NCCL only moves GPU memory, Gloo moves CPU memory."""
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier(ctx: DistContext) -> None:
    """Wait until every process gets here; nothing to wait for in a single process."""
    if not ctx.is_distributed:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every rank.

    Args:
        obj: the object on rank ``src``; ignored on the others.
        ctx: this process's context.
        src: the sending rank.

    Returns:
        ``src``'s object, on every rank (the input itself in a single process).
    """
    if not ctx.is_distributed:
        return obj
    holder = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(holder, src=src, device=_comm_device(ctx))
    return holder[0]


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` in a single process).

    For small per-rank results (rows of a results file, per-scan summaries), not for tensors
    of per-sample metrics (see :func:`gather_per_sample`).
    """
    if not ctx.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise sum of ``tensor`` over all ranks.

    Args:
        tensor: this rank's values; same shape and dtype on every rank.
        ctx: this process's context.

    Returns:
        The sum, on ``tensor``'s device; the input itself in a single process. The input is
        not modified.
    """
    if not ctx.is_distributed:
        return tensor
    work = tensor.detach().to(_comm_device(ctx), copy=True).contiguous()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def _all_gather(tensor: torch.Tensor, ctx: DistContext) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor)
    return parts


def gather_per_sample(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate every rank's per-sample columns, in rank order, on every rank.

    Ranks may hold different numbers of samples: the lengths are gathered first, each rank
    pads to the longest, and the padding is cut off again before concatenating.

    With a ``DistributedSampler`` the ranks do not hold disjoint samples: it repeats a few
    samples so that every rank gets the same count, and rank r holds samples r, r + W, ...
    To count every sample once, gather the sample indices (int64) alongside the metrics
    (float32, one call each) and keep the first column for each index, e.g. with
    :func:`first_occurrence_mask`.

    Args:
        tensor: shape (K, n_local): K values per sample (e.g. label, probability, loss) for
            this rank's n_local samples. K and dtype must be the same on every rank.
        ctx: this process's context.

    Returns:
        Shape (K, N_total) on ``tensor``'s device; the input itself in a single process.
    """
    if tensor.dim() != 2:
        raise ValueError(f"gather_per_sample expects a (K, n) tensor, got shape {tuple(tensor.shape)}")
    if not ctx.is_distributed:
        return tensor
    comm = _comm_device(ctx)
    dtype_code = _GATHER_DTYPES.index(tensor.dtype) if tensor.dtype in _GATHER_DTYPES else -1
    header = torch.tensor([tensor.shape[0], tensor.shape[1], dtype_code], dtype=torch.int64, device=comm)
    headers = [h.tolist() for h in _all_gather(header, ctx)]
    if any(h[0] != headers[0][0] or h[2] != headers[0][2] for h in headers) or dtype_code < 0:
        raise ValueError(f"gather_per_sample needs the same K and a supported dtype on every rank; "
                         f"got (K, n, dtype) {[(h[0], h[1], _dtype_name(h[2])) for h in headers]}")
    lengths = [h[1] for h in headers]
    longest = max(lengths)
    # Gloo cannot reduce or gather bool tensors everywhere; bytes travel fine.
    send = tensor.detach().to(comm)
    send = send.to(torch.uint8) if tensor.dtype == torch.bool else send
    padded = torch.zeros((send.shape[0], longest), dtype=send.dtype, device=comm)
    padded[:, : send.shape[1]] = send
    parts = _all_gather(padded, ctx)
    gathered = torch.cat([part[:, :n] for part, n in zip(parts, lengths)], dim=1)
    return gathered.to(device=tensor.device, dtype=tensor.dtype)


def _dtype_name(code: int) -> str:
    return str(_GATHER_DTYPES[code]) if 0 <= code < len(_GATHER_DTYPES) else "unsupported"


def first_occurrence_mask(indices: torch.Tensor) -> torch.Tensor:
    """True where a sample index appears for the first time (drops a sampler's padding repeats).

    Args:
        indices: 1-D integer tensor of sample indices, as gathered.

    Returns:
        A bool tensor of the same length.
    """
    order = torch.argsort(indices, stable=True)
    sorted_idx = indices[order]
    first_in_sorted = torch.ones_like(sorted_idx, dtype=torch.bool)
    first_in_sorted[1:] = sorted_idx[1:] != sorted_idx[:-1]
    mask = torch.zeros_like(first_in_sorted)
    mask[order] = first_in_sorted
    return mask


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed Python's, NumPy's and torch's generators (all GPUs included).

    Args:
        seed: the run's seed.
        rank: added to the seed so that ranks draw different augmentations.

    Returns:
        The seed actually used (``seed + rank``).
    """
    effective = seed + rank
    random.seed(effective)
    np.random.seed(effective % 2**32)  # numpy only takes 32-bit seeds
    torch.manual_seed(effective)
    return effective

"""Where and how the network runs: the device, the autocast precision, the memory format.

The ``auto`` choices are the fast ones that were measured (``benchmarks/``): bf16 autocast and
channels-last on a CPU whose oneDNN has bf16 kernels (AVX-512 or newer), fp32 and channels-last
on other CPUs, bf16 (or fp16 with a GradScaler) on a GPU.
"""
from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from luna.errors import UsageError

log = logging.getLogger(__name__)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_CHOICES = ("auto", *PRECISIONS)
CHANNELS_LAST_CHOICES = ("auto", "on", "off")


def resolve_device(device_arg: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """Turn a ``--device`` value into a device this process can use.

    Args:
        device_arg: ``auto`` (GPU ``local_rank`` when CUDA is available, else CPU), ``cpu``,
            ``cuda`` (GPU ``local_rank``), ``cuda:N`` or ``mps``.
        local_rank: this process's index on the machine.
        world_size: number of processes; ``cuda:N`` would put them all on one GPU.

    Returns:
        The device.

    Raises:
        UsageError: an unknown value, or a device that is not available here.
    """
    match = _DEVICE_PATTERN.match(device_arg.strip().lower())
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UsageError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device_arg!r}")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if kind == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError("--device mps: Apple MPS is not available on this machine")
        return torch.device("mps")
    # kind is "cuda" or "auto" with CUDA available.
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device_arg}: CUDA is not available on this machine")
    if index is not None and world_size > 1:
        raise UsageError(f"--device {device_arg} names one GPU but {world_size} processes were started; "
                         "use --device cuda (each process takes GPU LOCAL_RANK)")
    gpu = int(index) if index is not None else local_rank
    if gpu >= torch.cuda.device_count():
        raise UsageError(f"--device {device_arg}: GPU {gpu} does not exist "
                         f"({torch.cuda.device_count()} visible)")
    return torch.device("cuda", gpu)


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN runs bf16 convolutions natively on this CPU (AVX-512 or newer).

    Elsewhere (AVX2-only CPUs: many laptops, older servers) bf16 autocast falls back to reference
    kernels: a luna_twoscale training step measured ~20x slower than fp32 on one AVX2 core.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 either
        return False


@dataclass
class Performance:
    """The speed settings chosen for a device (see :func:`resolve_performance`)."""

    precision: str
    channels_last: bool
    compile: bool = False


def resolve_performance(precision: str, channels_last: str, device: torch.device,
                        compile: bool = False) -> Performance:
    """Turn ``auto`` speed settings into choices for this device.

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        channels_last: ``auto``, ``on`` or ``off``.
        device: where the model runs.
        compile: whether to ``torch.compile`` the model.

    Raises:
        UsageError: fp16 on the CPU.
    """
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu":
            # oneDNN bf16 convolutions: ~3.5x fp32 on AVX-512 CPUs (see benchmarks/), ~20x slower without.
            precision = "bf16" if cpu_has_fast_bf16() else "fp32"
        else:
            precision = "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        log.warning("--precision bf16 on a CPU without native bf16 kernels (no AVX-512): expect it to be many "
                    "times slower than fp32; --precision auto picks fp32 here")
    return Performance(precision, channels_last != "off" and device.type in ("cpu", "cuda"), compile)


@dataclass
class StepConfig:
    """How batches are put on the device and run.

    Args:
        device: where the model lives.
        precision: "fp32", "bf16" or "fp16" (autocast; fp16 also uses a GradScaler).
        channels_last: feed channels_last_3d inputs (the model must be converted too).
    """

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def to_device(self, crops: torch.Tensor) -> torch.Tensor:
        # non_blocking pairs with pinned host memory: the copy overlaps with compute on a GPU.
        # Crops may travel as int16 (half the bytes); the model gets float32 HU.
        x = crops.to(self.device, non_blocking=True).float()
        if self.channels_last:
            x = x.contiguous(memory_format=_channels_last_format(x.dim()))
        return x


def _channels_last_format(dim: int) -> torch.memory_format:
    """Channels-last for a batch of volumes (N, C, D, H, W) or of images (N, C, H, W)."""
    return torch.channels_last_3d if dim == 5 else torch.channels_last


def prepare_model(model: nn.Module, device: torch.device | str, channels_last: bool = False) -> nn.Module:
    """Move a model to its device (before the optimiser is built) in the wanted memory format.

    Args:
        model: the network.
        device: where it will run.
        channels_last: store conv weights channels-last (channels_last_3d for a 3D network), which
            lets cuDNN / oneDNN pick their faster channels-last kernels when the input is
            channels-last too.

    Returns:
        The same module, moved in place.
    """
    if channels_last:
        # The format follows the convolutions' weights: 3D networks (N, C, D, H, W), 2D ones (N, C, H, W).
        weight_dims = {p.dim() for p in model.parameters()}
        model = model.to(device=device, memory_format=_channels_last_format(5 if 5 in weight_dims else 4))
    else:
        model = model.to(device=device)
    log.debug("%s on %s (channels_last=%s, %d parameters)",
              type(model).__name__, device, channels_last, sum(p.numel() for p in model.parameters()))
    return model

"""The optimiser and the learning-rate schedule of a training run.

The defaults (AdamW at 2e-3, 100 warm-up batches, cosine decay to 0 over the run) are what made
a model that finds nodules in the main job's budget (docs/results.md); the reference's plain SGD
at 0.001 with momentum 0.99 is one set of flags away.
"""
from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float = 0.99,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD (with ``momentum``), Adam or AdamW (decoupled ``weight_decay``) over the model's parameters."""
    params = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int):
    """A per-batch schedule, or None for a constant learning rate.

    ``cosine``: a linear warm-up over ``warmup_steps`` batches (at most a tenth of the run), then
    a cosine decay to 0 at ``total_steps``.
    """
    if schedule == "constant":
        return None
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")
    warmup = min(warmup_steps, max(total_steps // 10, 1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

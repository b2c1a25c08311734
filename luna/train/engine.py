"""One epoch of training and one of evaluation, as plain functions (torchvision style).

Both loops record, for every sample, its label, predicted nodule probability and loss in a
(3, N) float64 tensor, together with each sample's candidate index so that metrics can be gathered
across processes and matched back to candidates (for FROC). What the records are made of stays on
the device during the epoch and moves to the CPU once at the end (as the reference does); the
probabilities are then computed from the logits in float64, as ``luna predict`` computes them, so
that validation ranks the surest candidates as the model does instead of tying them at 1.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from luna.errors import LunaError
from luna.eval.metrics import classifier_metrics
from luna.models.classifier import nodule_probability
from luna.progress import enumerate_with_estimate
from luna.runtime.device import StepConfig
from luna.train.augment import AugmentConfig, augment_batch

log = logging.getLogger(__name__)

# The rows of the per-sample records: label (1 = nodule), predicted nodule probability, loss.
METRICS_LABEL_NDX = 0
METRICS_PRED_NDX = 1
METRICS_LOSS_NDX = 2
METRICS_SIZE = 3


class TrainingDiverged(LunaError):
    """The loss stopped being a finite number."""


def _forward(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, cfg: StepConfig):
    with cfg.autocast():
        logits, _ = model(x)
    # The loss in float32 whatever the autocast dtype: per-sample values are logged.
    logits = logits.float()
    return F.cross_entropy(logits, labels, reduction="none"), logits


class _Records:
    """One epoch's per-sample records, kept on the device until :meth:`finish`."""

    def __init__(self) -> None:
        self.labels_loss: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.indices: list[torch.Tensor] = []

    def add(self, labels: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor, cand_ndx: torch.Tensor) -> None:
        self.labels_loss.append(torch.stack([labels.float(), loss.detach()]))
        self.logits.append(logits.detach())
        self.indices.append(cand_ndx)

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(metrics (3, n) float64 on the CPU, candidate indices (n,))``."""
        if not self.indices:
            return torch.zeros(METRICS_SIZE, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
        # One device -> host copy of each kind per epoch, not one per batch.
        labels, loss = torch.cat(self.labels_loss, dim=1).cpu().double()
        metrics_t = torch.stack([labels, nodule_probability(torch.cat(self.logits)), loss])  # METRICS_*_NDX order
        return metrics_t, torch.cat(self.indices).to(torch.int64)


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer,
                    scheduler, scaler: torch.amp.GradScaler | None, cfg: StepConfig, epoch: int,
                    augment: AugmentConfig | None = None,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Train for one pass over ``loader``.

    Args:
        model: the (possibly DDP-wrapped) model, already on ``cfg.device``.
        loader: yields ``(crops, labels_onehot, series_uids, centers_irc, candidate_ndx)``.
        optimizer, scheduler: the scheduler (or None) steps once per batch.
        scaler: GradScaler for fp16, else None.
        cfg: device, precision, memory format.
        epoch: 1-based, for messages.
        augment: training-time augmentation, applied on the device after the cache read; None: off.
        generator: random source of the augmentation.

    Returns:
        ``(metrics (3, n) float64 on the CPU, candidate indices (n,))`` for this process's samples.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (naming epoch and batch).
    """
    model.train()
    records = _Records()
    batches = enumerate_with_estimate(loader, f"E{epoch} Training", start_ndx=getattr(loader, "num_workers", 0),
                                      total=len(loader))
    for batch_ndx, (crops, labels_onehot, _uids, _centers, cand_ndx) in batches:
        x = cfg.to_device(crops)
        labels = labels_onehot[:, 1].to(cfg.device, non_blocking=True)
        if augment is not None:
            x = augment_batch(x, augment, generator)
        loss, logits = _forward(model, x, labels, cfg)
        mean_loss = loss.mean()
        if not torch.isfinite(mean_loss):
            raise TrainingDiverged(f"loss became {mean_loss.item()} at epoch {epoch}, batch {batch_ndx + 1} "
                                   "of training; try a lower --lr (the last good checkpoint is kept)")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(mean_loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            mean_loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        records.add(labels, logits, loss, cand_ndx)
    return records.finish()


@torch.no_grad()
def evaluate(model: nn.Module, loader, cfg: StepConfig, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every sample of ``loader`` without gradients, augmentation or weight updates.

    Returns:
        ``(metrics (3, n) float64 on the CPU, candidate indices (n,))``.
    """
    model.eval()
    records = _Records()
    batches = enumerate_with_estimate(loader, f"E{epoch} Validation", start_ndx=getattr(loader, "num_workers", 0),
                                      total=len(loader))
    for _, (crops, labels_onehot, _uids, _centers, cand_ndx) in batches:
        labels = labels_onehot[:, 1].to(cfg.device, non_blocking=True)
        loss, logits = _forward(model, cfg.to_device(crops), labels, cfg)
        records.add(labels, logits, loss, cand_ndx)
    return records.finish()


def epoch_metrics(metrics_t: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """The classifier's figures (:func:`luna.eval.metrics.classifier_metrics`) of one epoch's records."""
    if metrics_t.dim() != 2 or metrics_t.shape[0] != METRICS_SIZE:
        raise ValueError(f"metrics tensor must be ({METRICS_SIZE}, N), got {tuple(metrics_t.shape)}")
    values = metrics_t.detach().to(device="cpu", dtype=torch.float64).numpy()
    return classifier_metrics(values[METRICS_LABEL_NDX], values[METRICS_PRED_NDX], values[METRICS_LOSS_NDX],
                              threshold)

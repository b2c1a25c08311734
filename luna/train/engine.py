"""One epoch of training and one of evaluation, as plain functions (torchvision style).

Both loops record, for every sample, its label, predicted nodule probability and loss in a
(3, N) tensor that stays on the device during the epoch and moves to the CPU once at the end
(as the reference does), together with each sample's candidate index so that metrics can be gathered
across processes and matched back to candidates (for FROC).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from luna.errors import LunaError
from luna.eval.metrics import classifier_metrics
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
        logits, probabilities = model(x)
    # The loss in float32 whatever the autocast dtype: per-sample values are logged.
    loss = F.cross_entropy(logits.float(), labels, reduction="none")
    return loss, probabilities[:, 1].float()


def _record(labels: torch.Tensor, probs: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    return torch.stack([labels.float(), probs.detach(), loss.detach()])


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
        ``(metrics (3, n) on the CPU, candidate indices (n,))`` for this process's samples.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (naming epoch and batch).
    """
    model.train()
    records, indices = [], []
    batches = enumerate_with_estimate(loader, f"E{epoch} Training", start_ndx=getattr(loader, "num_workers", 0),
                                      total=len(loader))
    for batch_ndx, (crops, labels_onehot, _uids, _centers, cand_ndx) in batches:
        x = cfg.to_device(crops)
        labels = labels_onehot[:, 1].to(cfg.device, non_blocking=True)
        if augment is not None:
            x = augment_batch(x, augment, generator)
        loss, probs = _forward(model, x, labels, cfg)
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
        records.append(_record(labels, probs, loss))
        indices.append(cand_ndx)
    return _finish(records, indices)


@torch.no_grad()
def evaluate(model: nn.Module, loader, cfg: StepConfig, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every sample of ``loader`` without gradients, augmentation or weight updates.

    Returns:
        ``(metrics (3, n) on the CPU, candidate indices (n,))``.
    """
    model.eval()
    records, indices = [], []
    batches = enumerate_with_estimate(loader, f"E{epoch} Validation", start_ndx=getattr(loader, "num_workers", 0),
                                      total=len(loader))
    for _, (crops, labels_onehot, _uids, _centers, cand_ndx) in batches:
        labels = labels_onehot[:, 1].to(cfg.device, non_blocking=True)
        loss, probs = _forward(model, cfg.to_device(crops), labels, cfg)
        records.append(_record(labels, probs, loss))
        indices.append(cand_ndx)
    return _finish(records, indices)


def _finish(records: list[torch.Tensor], indices: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if not records:
        return torch.zeros(METRICS_SIZE, 0), torch.zeros(0, dtype=torch.int64)
    # One device -> host copy per epoch, not one per batch.
    return torch.cat(records, dim=1).cpu(), torch.cat(indices).to(torch.int64)


def epoch_metrics(metrics_t: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """The classifier's figures (:func:`luna.eval.metrics.classifier_metrics`) of one epoch's records."""
    if metrics_t.dim() != 2 or metrics_t.shape[0] != METRICS_SIZE:
        raise ValueError(f"metrics tensor must be ({METRICS_SIZE}, N), got {tuple(metrics_t.shape)}")
    values = metrics_t.detach().to(device="cpu", dtype=torch.float64).numpy()
    return classifier_metrics(values[METRICS_LABEL_NDX], values[METRICS_PRED_NDX], values[METRICS_LOSS_NDX],
                              threshold)

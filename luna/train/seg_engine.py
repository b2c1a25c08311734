"""One epoch of segmentation training and one validation over held-out scans.

Loss: the reference's is the Dice loss of the whole output plus 8 times the Dice loss of the
output restricted to the true mask. The second term only counts the nodule voxels, so missing
part of a nodule costs eight times what marking a voxel too many does: a detector that misses a
nodule loses it for good, while a false mark is the classifier's to reject. Alone, it trains
slowly out of marking everything: once a crop is mostly marked, the Dice of the whole output
barely changes with any one false voxel, and in the main job's budget the model still marked
every vessel, over a thousand blobs per scan (docs/experiments.md). The default, ``bce_dice``,
is the Dice of the whole output plus a per-voxel binary cross-entropy, in which every false
voxel pays for itself and nodule voxels weigh 4 times as much (missing stays the dearer
mistake).

Training records the loss and the per-voxel true/false positive and false negative counts at
0.5; validation segments each held-out scan the way ``luna detect`` does (the lung region,
whole slices) and records the same counts plus what detection needs: how many nodules the
grouped candidates hit, and how many candidates a scan gives (before the classifier).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from luna.data.seg_cache import SegEntry
from luna.data.seg_grid import lung_region
from luna.eval.metrics import voxel_metrics
from luna.infer.grouping import THRESHOLD, group_candidates
from luna.infer.segmentation import segment_volume
from luna.progress import enumerate_with_estimate
from luna.runtime.device import StepConfig
from luna.train.engine import TrainingDiverged

log = logging.getLogger(__name__)

# How much more a missed nodule voxel costs than a false one (the reference's 8).
FALSE_NEGATIVE_WEIGHT = 8.0
# How much more a nodule voxel weighs than another in the cross-entropy of ``bce_dice``.
BCE_NODULE_WEIGHT = 4.0
SEG_LOSSES = ("bce_dice", "dice")
# Training totals: loss sum, samples, true positives, false positives, false negatives.
TRAIN_TOTALS = 5
# Validation totals: the voxel counts, then nodules, nodules hit by a candidate, candidates, scans.
VAL_TOTALS = 7


def dice_loss(prediction: torch.Tensor, label: torch.Tensor, epsilon: float = 1.0) -> torch.Tensor:
    """1 - Dice coefficient per sample, (N,): soft, on probabilities; ``epsilon`` keeps an empty
    mask and an empty prediction at 0 loss."""
    dims = tuple(range(1, prediction.dim()))
    overlap = (prediction * label).sum(dim=dims)
    return 1 - (2 * overlap + epsilon) / (prediction.sum(dim=dims) + label.sum(dim=dims) + epsilon)


def segmentation_loss(prediction: torch.Tensor, label: torch.Tensor, loss: str = "bce_dice") -> torch.Tensor:
    """Per-sample loss (see the module docstring): ``"dice"``, the reference's Dice of the whole output
    + FALSE_NEGATIVE_WEIGHT x Dice of the output on the mask; ``"bce_dice"``, the Dice of the whole
    output + a per-voxel binary cross-entropy whose nodule voxels weigh BCE_NODULE_WEIGHT times as
    much."""
    if loss not in SEG_LOSSES:
        raise ValueError(f"loss must be one of {', '.join(SEG_LOSSES)}, got {loss!r}")
    if loss == "dice":
        return dice_loss(prediction, label) + FALSE_NEGATIVE_WEIGHT * dice_loss(prediction * label, label)
    weight = 1 + (BCE_NODULE_WEIGHT - 1) * label
    voxels = F.binary_cross_entropy(prediction, label, weight=weight, reduction="none")
    return dice_loss(prediction, label) + voxels.mean(dim=tuple(range(1, voxels.dim())))


def _counts(prediction: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    marked, true = prediction > THRESHOLD, label > 0.5
    return torch.stack([(marked & true).sum(), (marked & ~true).sum(), (~marked & true).sum()]).double()


def train_seg_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler, cfg: StepConfig,
                    epoch: int, loss_name: str = "bce_dice") -> torch.Tensor:
    """Train one epoch; return this process's totals, float64 (TRAIN_TOTALS,) on the CPU.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (naming epoch and batch).
    """
    model.train()
    totals = torch.zeros(TRAIN_TOTALS, dtype=torch.float64, device=cfg.device)
    batches = enumerate_with_estimate(loader, f"E{epoch} Training", start_ndx=getattr(loader, "num_workers", 0),
                                      total=len(loader))
    for batch_ndx, (x, mask, _ndx) in batches:
        x, mask = cfg.to_device(x), mask.to(cfg.device, non_blocking=True)
        with cfg.autocast():
            prediction = model(x)
        loss = segmentation_loss(prediction.float(), mask, loss_name)
        mean_loss = loss.mean()
        if not torch.isfinite(mean_loss):
            raise TrainingDiverged(f"loss became {mean_loss.item()} at epoch {epoch}, batch {batch_ndx + 1} "
                                   "of training; try a lower --lr (the last good checkpoint is kept)")
        optimizer.zero_grad(set_to_none=True)
        mean_loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            totals[0] += loss.detach().sum().double()
            totals[1] += len(loss)
            totals[2:] += _counts(prediction.detach(), mask)
    return totals.cpu()


@dataclass
class ValidationScan:
    """What validating one scan leaves: its probability map, for pictures, and its totals."""

    entry: SegEntry
    probability_a: np.ndarray
    totals: np.ndarray


def validate_scan(model: nn.Module, entry: SegEntry, cfg: StepConfig, batch_size: int) -> ValidationScan:
    """Segment one held-out scan as ``luna detect`` does, and count (see the module docstring)."""
    volume = entry.volume
    probability = segment_volume(model, volume.hu_a, cfg, batch_size, lung_region(volume))
    marked, true = probability > THRESHOLD, np.asarray(entry.mask_a) > 0
    candidates = group_candidates(probability, volume)
    hit = 0
    if candidates and len(entry.nodules_irc):
        centers_mm = np.array([c.center_irc for c in candidates]) * volume.spacing_irc
        nodules_mm = entry.nodules_irc * volume.spacing_irc
        distance = np.linalg.norm(nodules_mm[:, None, :] - centers_mm[None, :, :], axis=2)
        hit = int((distance < entry.diameters_mm[:, None] / 2).any(axis=1).sum())
    totals = np.array([(marked & true).sum(), (marked & ~true).sum(), (~marked & true).sum(),
                       len(entry.nodules_irc), hit, len(candidates), 1], dtype=np.float64)
    return ValidationScan(entry, probability, totals)


def train_metrics(totals: torch.Tensor) -> dict[str, float]:
    """Loss and per-voxel figures of an epoch's (gathered) training totals."""
    loss_sum, samples, tp, fp, fn = (float(v) for v in totals)
    return {"loss/all": loss_sum / max(samples, 1.0), **voxel_metrics(int(tp), int(fp), int(fn))}


def val_metrics(totals: np.ndarray) -> dict[str, float]:
    """Per-voxel figures and candidate recall of the (summed) validation totals."""
    tp, fp, fn, nodules, hit, candidates, scans = (float(v) for v in totals)
    return {**voxel_metrics(int(tp), int(fp), int(fn)),
            "candidates/recall": hit / nodules if nodules else float("nan"),
            "candidates/per_scan": candidates / max(scans, 1.0),
            "nodules": nodules, "nodules_hit": hit}

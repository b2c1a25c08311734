"""Scoring candidates straight from the scans with a trained model, no crop cache involved.

Prediction runs on scans that training never saw, so nothing here reads or fills the cache:
each scan is read with :class:`~luna.io.ct.Ct`, its candidates are cropped a batch at a time and
the model gives each one a nodule probability. Memory stays at one scan plus one batch of crops
(two scans while the next one is read ahead in a background thread).
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from luna.data.crops import Cropper, CropConfig
from luna.io.ct import Ct
from luna.models.classifier import nodule_probability
from luna.models.views import predict_views
from luna.runtime.device import StepConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanJob:
    """The candidates of one scan to score.

    Args:
        series_uid: the scan's uid.
        scan_path: its file or DICOM folder (see :class:`~luna.io.ct.Ct`).
        centers_xyz: candidate centres in world millimetres, in output order.
    """

    series_uid: str
    scan_path: Path
    centers_xyz: Sequence[Sequence[float]]


def crops_to_batch(crops_irc: np.ndarray, step_cfg: StepConfig) -> torch.Tensor:
    """int16 crops (N, I, R, C) -> float32 batch (N, 1, I, R, C) on the step's device.

    The int16 array crosses to the device before the float conversion: half the bytes to copy.
    """
    x = step_cfg.to_device(torch.from_numpy(crops_irc).unsqueeze(1))
    # .float() keeps the memory format to_device chose (channels_last_3d or not).
    return x.float()


@torch.inference_mode()
def score_scan(model: nn.Module, ct: Ct, centers_xyz: Sequence[Sequence[float]], step_cfg: StepConfig,
               batch_size: int = 64, crop: CropConfig = CropConfig(), views: int = 1,
               views_top: int = 0) -> np.ndarray:
    """Nodule probability of each candidate of one scan.

    Args:
        model: a classifier returning ``(logits, probabilities)``, already on ``step_cfg.device``.
            It is switched to eval mode: batch norm must use its running statistics, or a
            candidate's score would depend on which other candidates share its batch.
        ct: the scan, in memory.
        centers_xyz: candidate centres (world mm).
        step_cfg: device, autocast precision and memory format.
        batch_size: crops per forward pass.
        crop: crop size and rule at the volume's edge that the model was trained with.
        views: in-plane symmetric views averaged per candidate (see :func:`luna.models.views.predict_views`).
        views_top: when > 0 (and ``views`` > 1), every candidate is first scored at one view and
            only the ``views_top`` best of the scan are scored again with all ``views``; the
            others keep their one-view score. A scan has about a thousand candidates and the
            FROC up to 8 false positives per scan reads only its best-scored few dozen, so the
            views are spent where they can change the ranking (docs/results.md measures it).

    Returns:
        float64 array (len(centers_xyz),) of probabilities in [0, 1], in the order given.

    Raises:
        DataError: a centre lies outside the scan.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    cropper = Cropper(ct, crop)
    if views == 1 or not 0 < views_top < len(centers_xyz):
        return _score_crops(model, cropper, centers_xyz, step_cfg, batch_size, views)
    probabilities = _score_crops(model, cropper, centers_xyz, step_cfg, batch_size, 1)
    # Stable order, so that ties at the cut are broken the same way on every run.
    top = np.argsort(-probabilities, kind="stable")[:views_top]
    probabilities[top] = _score_crops(model, cropper, [centers_xyz[i] for i in top], step_cfg, batch_size, views)
    return probabilities


def _score_crops(model: nn.Module, cropper: Cropper, centers_xyz: Sequence[Sequence[float]], step_cfg: StepConfig,
                 batch_size: int, views: int) -> np.ndarray:
    """Probabilities of the candidates at ``centers_xyz``, ``batch_size`` crops at a time."""
    probabilities = np.empty(len(centers_xyz), dtype=np.float64)
    crops = np.empty((min(batch_size, len(centers_xyz)), *cropper.shape_irc), dtype=np.int16)
    for start in range(0, len(centers_xyz), batch_size):
        chunk = centers_xyz[start:start + batch_size]
        for row, center_xyz in enumerate(chunk):
            crops[row] = cropper.crop_at(center_xyz)[0]
        x = crops_to_batch(crops[:len(chunk)], step_cfg)
        with step_cfg.autocast():
            logits, _ = predict_views(model, x, views)
        # The copy to the CPU waits for the device, so the crop buffer is free to refill afterwards.
        probabilities[start:start + len(chunk)] = nodule_probability(logits).numpy()
    return probabilities


def _read_ct(job: ScanJob) -> Ct:
    return Ct(job.scan_path, job.series_uid)


def iter_scan_scores(model: nn.Module, jobs: Sequence[ScanJob], step_cfg: StepConfig, batch_size: int = 64,
                     crop: CropConfig = CropConfig(), views: int = 1, views_top: int = 0,
                     prefetch: bool = True) -> Iterator[tuple[ScanJob, np.ndarray]]:
    """Score scan after scan, yielding ``(job, probabilities)`` in the order of ``jobs``.

    Args:
        model, step_cfg, batch_size, crop, views, views_top: as for :func:`score_scan`.
        jobs: the scans and their candidates.
        prefetch: read the next scan in a background thread while this one is scored. Reading
            (SimpleITK, then clipping) and the model both spend most of their time outside
            the Python interpreter, so the two overlap.

    Yields:
        One ``(job, probabilities)`` per job.

    Raises:
        DataError: a scan cannot be read, or a candidate lies outside its scan; raised when
            that scan's turn comes, whichever thread read it.
    """
    if not prefetch:
        for job in jobs:
            yield job, score_scan(model, _read_ct(job), job.centers_xyz, step_cfg, batch_size, crop, views, views_top)
        return
    if not jobs:
        return
    # One worker and one read ahead: at most two scans in memory whatever the data set size.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="luna-scan-reader") as pool:
        pending: Future[Ct] = pool.submit(_read_ct, jobs[0])
        for ndx, job in enumerate(jobs):
            ct = pending.result()
            if ndx + 1 < len(jobs):
                pending = pool.submit(_read_ct, jobs[ndx + 1])
            probabilities = score_scan(model, ct, job.centers_xyz, step_cfg, batch_size, crop, views, views_top)
            del ct  # the reader may already be filling the next one
            yield job, probabilities

"""Which training negatives are drawn, and how often, beyond uniform balanced sampling.

Two rules that both follow from how LUNA16 scores a results file (SPEC section 6):

- *Excluded findings* (``annotations_excluded.csv``) are neither hits nor false positives, so a
  training negative lying inside one teaches the model nothing the score rewards
  (``luna train --skip-excluded`` leaves such negatives out).
- *Near misses*: a candidate just outside a nodule's radius is a false positive by the rules, yet
  its crop shows the nodule a few millimetres off-centre. Such negatives are rare (about one per
  nodule) and uniform sampling shows each once in a run; a model that never learns to tell "a
  nodule at the centre" from "a nodule beside the centre" scores the near miss as high as the
  nodule, and then non-maximum suppression keeps whichever of the two scores higher. On held-out
  scans most of the missed nodules were suppressed by such a neighbour that outscored them
  (README, "Training recipe and results"). ``--near-negatives F`` draws a share F of the
  negatives from those within ``--near-mm`` of a nodule's surface.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from luna.candidates import CandidateInfo
from luna.froc import inside_findings

log = logging.getLogger(__name__)


def near_nodule_mask(candidates: Sequence[CandidateInfo], annotations: Mapping[str, np.ndarray],
                     margin_mm: float) -> np.ndarray:
    """(N,) bool: negatives closer than ``margin_mm`` to the surface of a nodule of their scan.

    Args:
        candidates: the dataset's candidates.
        annotations: ``{uid: (M, 4) x, y, z, diameter_mm}`` of the nodules (annotations.csv).
        margin_mm: distance beyond the nodule's radius (diameter / 2) that still counts as near.

    Returns:
        True for non-nodule candidates within ``radius + margin_mm`` of a nodule centre.
    """
    if not candidates:
        return np.zeros(0, dtype=bool)
    grown = {uid: np.column_stack([f[:, :3], f[:, 3].clip(min=0) + 2 * margin_mm])
             for uid, f in annotations.items() if len(f)}
    near = inside_findings([c.series_uid for c in candidates], np.array([c.center_xyz for c in candidates]), grown)
    return near & ~np.array([c.is_nodule for c in candidates])


def mix_negative_weights(base: np.ndarray | None, near: np.ndarray, fraction: float) -> np.ndarray | None:
    """Sampling weights of the negatives: a share ``fraction`` spread over the near misses.

    Args:
        base: weights from hard-negative mining, or None for uniform.
        near: (N,) bool over the same negatives (see :func:`near_nodule_mask`).
        fraction: share of the draws that go to near misses, in [0, 1).

    Returns:
        Weights summing to 1, or ``base`` unchanged when there is nothing to mix.
    """
    if fraction <= 0 or not near.any():
        return base
    rest = np.full(len(near), 1.0 / len(near)) if base is None else np.asarray(base, dtype=np.float64) / np.sum(base)
    return (1 - fraction) * rest + fraction * near / near.sum()

"""Which training negatives are drawn, and how often: the one place for the sampling policy.

Balanced sampling itself (one positive, then ``ratio`` negatives, fixed-size epochs) is
:class:`~luna.data.dataset.LunaDataset`'s; this module decides *which* negatives take part and
with what weight, from two rules that follow from how LUNA16 scores a results file
(docs/luna16.md, "Scoring"):

- *Excluded findings* (``annotations_excluded.csv``) count neither as hits nor as false
  positives, so a training negative inside one teaches the model nothing the score rewards, and
  costs it small nodules: :func:`excluded_filter` leaves such negatives out (``--skip-excluded``).
- *Hard negatives*: most negatives are easy after an epoch; the few that look like nodules
  (vessels seen end-on, bifurcations) decide the top of the ranking. :class:`HardNegativeMiner`
  remembers each negative's last training loss and draws a share of the negatives in proportion
  to it (``--hard-negatives``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from luna.luna16.candidates import CandidateInfo
from luna.luna16.csvfiles import read_annotations
from luna.luna16.rules import inside_findings

log = logging.getLogger(__name__)


def excluded_filter(excluded_csv: Path | None) -> Callable[[list[CandidateInfo]], np.ndarray] | None:
    """A ``keep`` function for :class:`~luna.data.dataset.LunaDataset` that drops the negatives
    lying inside an excluded finding; None when there is no exclusions file.

    Args:
        excluded_csv: ``annotations_excluded.csv`` (same columns as the annotations).
    """
    if excluded_csv is None:
        return None
    excluded = read_annotations(excluded_csv, "excluded annotations")

    def keep(candidates: list[CandidateInfo]) -> np.ndarray:
        inside = inside_findings([c.series_uid for c in candidates],
                                 np.array([c.center_xyz for c in candidates]), excluded)
        return ~inside | np.array([c.is_nodule for c in candidates])
    return keep


class HardNegativeMiner:
    """Remembers each training negative's latest loss and turns it into sampling weights.

    Weights mix uniform sampling (1 - fraction) with sampling in proportion to the loss
    (fraction); negatives never seen yet count with the largest loss seen, so they get drawn.

    Args:
        n_candidates: size of the dataset's candidate list.
        neg_ndx: positions of the negatives in that list.
        fraction: share of the loss-proportional part, in [0, 1].
    """

    def __init__(self, n_candidates: int, neg_ndx: np.ndarray, fraction: float):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"the hard-negative share must be in [0, 1], got {fraction}")
        self.fraction = fraction
        self.position = np.full(n_candidates, -1, dtype=np.int64)
        self.position[neg_ndx] = np.arange(len(neg_ndx))
        self.loss = np.full(len(neg_ndx), np.nan)

    def update(self, cand_ndx: np.ndarray, losses: np.ndarray) -> None:
        """Record the losses of the samples ``cand_ndx`` (positives are ignored)."""
        pos = self.position[cand_ndx]
        keep = pos >= 0
        self.loss[pos[keep]] = losses[keep]

    def weights(self) -> np.ndarray | None:
        """Sampling weights over the negatives, or None (uniform) before any loss is known."""
        if self.fraction == 0 or np.isnan(self.loss).all():
            return None
        loss = np.nan_to_num(self.loss, nan=np.nanmax(self.loss))
        loss = np.clip(loss, 1e-6, None)
        return (1 - self.fraction) / len(loss) + self.fraction * loss / loss.sum()

"""Validation CPM during training: per-sample probabilities -> LUNA16 FROC on held-out scans.

The probabilities go through the same non-maximum suppression as ``luna predict``'s default
(:mod:`luna.eval.suppression`), so the epoch's CPM is measured the way a user's results file is.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from luna.data.dataset import LunaDataset
from luna.eval.froc import compute_froc
from luna.eval.suppression import NMS_RADIUS_MM, suppress_neighbours
from luna.luna16.csvfiles import read_annotations, write_predictions
from luna.luna16.paths import ANNOTATION_FILE_NAMES, EXCLUDED_FILE_NAMES, find_csv, find_optional_csv
from luna.luna16.rules import FP_RATES
from luna.train.engine import METRICS_PRED_NDX

log = logging.getLogger(__name__)


class ValidationScorer:
    """Scores the validation candidates of one epoch by the official rules.

    Args:
        val_ds: the validation dataset (its candidates give uids and centres).
        annotations_csv: default: ``annotations.csv`` found in the data dir.
        excluded_csv: default: ``annotations_excluded.csv`` in the data dir, when present.
        nms_mm: non-maximum suppression radius (:mod:`luna.eval.suppression`); 0 = off.
    """

    fp_rates = FP_RATES

    def __init__(self, val_ds: LunaDataset, annotations_csv: Path | None = None,
                 excluded_csv: Path | None = None, nms_mm: float = NMS_RADIUS_MM):
        self.val_ds = val_ds
        self.nms_mm = nms_mm
        self.series_list = sorted({c.series_uid for c in val_ds.candidates})
        annotations_csv = annotations_csv or find_csv(val_ds.data_dir, ANNOTATION_FILE_NAMES, "annotations",
                                                      "--annotations")
        self.annotations = read_annotations(annotations_csv)
        excluded_csv = excluded_csv or find_optional_csv(val_ds.data_dir, EXCLUDED_FILE_NAMES)
        self.excluded = read_annotations(excluded_csv, "excluded annotations") if excluded_csv else None
        self.centers_xyz = np.array([c.center_xyz for c in val_ds.candidates], dtype=np.float64)
        self.uids = np.array([c.series_uid for c in val_ds.candidates])

    def score(self, metrics_t: torch.Tensor, cand_ndx: torch.Tensor,
              predictions_path: Path | None = None) -> dict[str, float]:
        """``froc/cpm`` and ``froc/sens@<rate>`` of the validation predictions.

        Args:
            metrics_t: the epoch's per-sample metrics tensor.
            cand_ndx: the validation candidate index of each of its columns.
            predictions_path: if given, the suppressed probabilities are also written there as a
                LUNA16 results file (for ``luna evaluate``), from the same single suppression pass.
        """
        ndx = cand_ndx.numpy()
        uids, centers_xyz = self.uids[ndx], self.centers_xyz[ndx]
        probabilities = suppress_neighbours(centers_xyz, metrics_t[METRICS_PRED_NDX].numpy(), self.nms_mm, uids)
        result = compute_froc(uids, centers_xyz, probabilities, self.annotations, self.excluded, self.series_list)
        if predictions_path is not None:
            write_predictions(predictions_path, uids, centers_xyz, probabilities)
        out = {"froc/cpm": float(result.cpm)}
        out.update({f"froc/sens@{rate:g}": float(result.sensitivity_at[rate]) for rate in FP_RATES})
        return out

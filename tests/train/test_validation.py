"""The training's validation CPM: the official rules on the suppressed probabilities."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from luna.data.dataset import LunaDataset
from luna.eval.froc import compute_froc
from luna.luna16.csvfiles import read_annotations, read_predictions
from luna.train.engine import METRICS_PRED_NDX, METRICS_SIZE
from luna.eval.suppression import NMS_RADIUS_MM, suppress_neighbours
from luna.train.validation import ValidationScorer


@pytest.mark.parametrize("nms_mm", [NMS_RADIUS_MM, 1000.0])
def test_cpm_and_written_file_use_the_suppressed_probabilities(tiny_luna, tmp_path, nms_mm):
    val_ds = LunaDataset(tiny_luna["root"], val_stride=2, is_val=True, cache_dir=tmp_path / "cache")
    scorer = ValidationScorer(val_ds, nms_mm=nms_mm)
    assert ValidationScorer(val_ds).nms_mm == NMS_RADIUS_MM  # the default is luna predict's
    n = len(val_ds.candidates)
    rng = np.random.default_rng(0)
    metrics_t = torch.zeros(METRICS_SIZE, n)
    metrics_t[METRICS_PRED_NDX] = torch.from_numpy(rng.random(n).astype(np.float32))
    # Scored in a shuffled order, as a distributed sampler may hand them back.
    cand_ndx = torch.from_numpy(rng.permutation(n))

    got = scorer.score(metrics_t, cand_ndx, tmp_path / "val.csv")
    uids = np.array([val_ds.candidates[i].series_uid for i in cand_ndx.tolist()])
    centers = np.array([val_ds.candidates[i].center_xyz for i in cand_ndx.tolist()], dtype=float)
    raw = metrics_t[METRICS_PRED_NDX].numpy()
    suppressed = suppress_neighbours(centers, raw, nms_mm, uids)
    if nms_mm > 100:  # the whole scan is one neighbourhood: only its top candidate keeps its score
        assert (suppressed < raw).sum() == n - len(set(uids))
    expected = compute_froc(uids, centers, suppressed, read_annotations(tiny_luna["root"] / "annotations.csv"),
                           None, sorted(set(uids)))
    assert got["froc/cpm"] == float(expected.cpm)
    assert set(got) == {"froc/cpm"} | {f"froc/sens@{rate:g}" for rate in scorer.fp_rates}

    written = read_predictions(tmp_path / "val.csv")
    assert written.series_uids.tolist() == uids.tolist()
    np.testing.assert_allclose(written.probabilities, suppressed, rtol=1e-5)

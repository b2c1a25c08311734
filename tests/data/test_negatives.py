import numpy as np
import pytest

from luna.data.negatives import HardNegativeMiner, excluded_filter
from luna.luna16.candidates import CandidateInfo
from luna.luna16.geometry import XyzTuple


def cand(uid: str, x: float, is_nodule: bool = False) -> CandidateInfo:
    return CandidateInfo(is_nodule, 0.0, uid, XyzTuple(x, 0.0, 0.0))


def test_excluded_filter_drops_negatives_inside_an_excluded_finding_only(tmp_path):
    csv = tmp_path / "annotations_excluded.csv"
    # A 4 mm finding at x=0 of scan a (radius 2 mm) and one of unknown size (10 mm) at x=50.
    csv.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\na,0,0,0,4\na,50,0,0,-1\n")
    keep = excluded_filter(csv)
    candidates = [cand("a", 1.0), cand("a", 1.0, is_nodule=True), cand("a", 2.0), cand("a", 54.9),
                  cand("b", 0.0), cand("a", 20.0)]
    # Inside (strictly closer than the radius) and not a nodule: left out; scan b has no finding.
    np.testing.assert_array_equal(keep(candidates), [False, True, True, False, True, True])
    assert excluded_filter(None) is None


def test_hard_negative_miner_weights_follow_the_losses():
    neg_ndx = np.array([2, 3, 5, 7])
    miner = HardNegativeMiner(8, neg_ndx, fraction=0.5)
    assert miner.weights() is None  # nothing seen yet: uniform
    miner.update(np.array([0, 3, 5, 5]), np.array([9.0, 1.0, 0.5, 3.0]))  # 0 is a positive: ignored
    w = miner.weights()
    assert w.sum() == pytest.approx(1.0)
    # 3 -> 1.0, 5 -> 3.0 (latest), unseen 2 and 7 count as the largest loss seen (3.0).
    expected = 0.5 / 4 + 0.5 * np.array([3.0, 1.0, 3.0, 3.0]) / 10.0
    np.testing.assert_allclose(w, expected)
    with pytest.raises(ValueError):
        HardNegativeMiner(8, neg_ndx, fraction=1.5)

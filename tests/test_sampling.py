import numpy as np
import pytest

from luna.candidates import CandidateInfo
from luna.geometry import XyzTuple
from luna.sampling import mix_negative_weights, near_nodule_mask


def cand(uid: str, x: float, is_nodule: bool = False) -> CandidateInfo:
    return CandidateInfo(is_nodule, 0.0, uid, XyzTuple(x, 0.0, 0.0))


def test_near_misses_are_negatives_within_the_margin_of_a_nodule_surface():
    # One 6 mm nodule at the origin of scan a (radius 3 mm), margin 4 mm: near means < 7 mm.
    annotations = {"a": np.array([[0.0, 0.0, 0.0, 6.0]])}
    candidates = [cand("a", 0.5, is_nodule=True), cand("a", 2.0), cand("a", 6.9), cand("a", 7.0),
                  cand("a", -5.0), cand("b", 1.0), cand("a", 30.0)]
    near = near_nodule_mask(candidates, annotations, margin_mm=4.0)
    # The nodule itself is never a near miss; scan b has no nodule; 7.0 mm is not "closer than".
    np.testing.assert_array_equal(near, [False, True, True, False, True, False, False])
    assert near_nodule_mask([], annotations, 4.0).shape == (0,)


def test_mixed_weights_give_the_near_misses_their_share():
    near = np.array([True, False, False, False, True, False, False, False, False, False])
    weights = mix_negative_weights(None, near, 0.5)
    assert weights.sum() == pytest.approx(1.0)
    # Half of the draws on the 2 near misses, plus their uniform share of the other half.
    assert weights[near].sum() == pytest.approx(0.5 + 0.5 * 2 / 10)
    assert np.all(weights[~near] == weights[~near][0])
    # Hard-negative weights are kept in proportion outside the near share.
    base = np.arange(1.0, 11.0)
    mixed = mix_negative_weights(base, near, 0.25)
    np.testing.assert_allclose(mixed[~near], 0.75 * base[~near] / base.sum())
    # Nothing to mix: the base weights come back untouched (None stays None: uniform).
    assert mix_negative_weights(None, np.zeros(10, bool), 0.5) is None
    assert mix_negative_weights(base, near, 0.0) is base

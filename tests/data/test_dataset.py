import numpy as np
import pytest

from luna.data.crops import crop_candidate
import torch

from luna.io.ct import Ct
from luna.io.scans import find_series_files
from luna.data.dataset import LunaDataset
from luna.errors import DataError


def test_samples_are_exactly_the_spec(tiny_luna, tmp_path):
    ds = LunaDataset(tiny_luna["root"], val_stride=0, cache_dir=tmp_path / "cache")
    crop_t, label_t, series_uid, center_irc = ds[0]
    assert crop_t.shape == (1, 32, 48, 48) and crop_t.dtype == torch.float32
    assert label_t.dtype == torch.long and label_t.tolist() == [0, 1]  # sorted: nodules first
    assert series_uid in tiny_luna["uids"]
    ct = Ct(find_series_files(tiny_luna["root"])[series_uid])
    fresh, fresh_irc = crop_candidate(ct, ds.candidates[0].center_xyz, (32, 48, 48))
    np.testing.assert_array_equal(crop_t[0].numpy(), fresh.astype(np.float32))
    assert tuple(center_irc.tolist()) == fresh_irc
    assert ds[len(ds) - 1][1].tolist() == [1, 0]


def test_scan_split_and_series_filter(tiny_luna, tmp_path):
    kw = dict(val_stride=2, cache_dir=tmp_path / "cache")
    train = LunaDataset(tiny_luna["root"], is_val=False, **kw)
    val = LunaDataset(tiny_luna["root"], is_val=True, **kw)
    assert len(train) + len(val) == len(tiny_luna["candidates"])
    assert not {c.series_uid for c in train.candidates} & {c.series_uid for c in val.candidates}
    uid = tiny_luna["uids"][2]
    one = LunaDataset(tiny_luna["root"], series_uid=uid, **kw)
    assert {c.series_uid for c in one.candidates} == {uid} and len(one) == 8
    with pytest.raises(DataError, match="has no candidates"):
        LunaDataset(tiny_luna["root"], series_uid="1.2.3", **kw)


def test_candidate_split_mode(tiny_luna, tmp_path):
    kw = dict(val_stride=4, split="candidate", cache_dir=tmp_path / "cache")
    val = LunaDataset(tiny_luna["root"], is_val=True, **kw)
    train = LunaDataset(tiny_luna["root"], is_val=False, **kw)
    assert len(val) == 8 and len(train) == 24
    # The reference's split shares scans between the sides.
    assert {c.series_uid for c in train.candidates} & {c.series_uid for c in val.candidates}


def test_balanced_sampling_alternates_and_reshuffles(tiny_luna, tmp_path):
    ds = LunaDataset(tiny_luna["root"], val_stride=0, ratio=2, epoch_size=30, cache_dir=tmp_path / "c")
    labels = [ds.candidates[ds.candidate_index(i)].is_nodule for i in range(30)]
    assert labels == [True, False, False] * 10
    first = [ds.candidate_index(i) for i in range(30)]
    ds.set_epoch(1)
    assert [ds.candidate_index(i) for i in range(30)] != first
    ds.set_epoch(0)
    assert [ds.candidate_index(i) for i in range(30)] == first
    # Every positive is used before any repeats.
    assert len({first[i] for i in range(0, 24, 3)}) == 8


def test_return_index_and_pickled_copy_reads_the_same(tiny_luna, tmp_path):
    import pickle
    ds = LunaDataset(tiny_luna["root"], val_stride=0, cache_dir=tmp_path / "cache", return_index=True)
    sample = ds[5]
    assert len(sample) == 5 and sample[4] == ds.candidate_index(5)
    clone = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker under spawn receives
    assert torch.equal(clone[5][0], sample[0])


def test_negative_weights_steer_which_negatives_are_drawn(tiny_luna, tmp_path):
    ds = LunaDataset(tiny_luna["root"], val_stride=0, ratio=1, epoch_size=400, cache_dir=tmp_path / "c")
    weights = np.zeros(len(ds.neg_ndx))
    weights[3] = 1.0  # all the mass on one negative
    ds.set_negative_weights(weights)
    ds.set_epoch(1)
    negatives = {ds.candidate_index(i) for i in range(1, 400, 2)}
    assert negatives == {int(ds.neg_ndx[3])}
    ds.set_negative_weights(None)
    ds.set_epoch(1)
    assert len({ds.candidate_index(i) for i in range(1, 400, 2)}) == len(ds.neg_ndx)
    with pytest.raises(ValueError):
        ds.set_negative_weights(np.zeros(len(ds.neg_ndx)))


def test_keep_filter_leaves_candidates_out_but_not_the_cache(tiny_luna, tmp_path):
    kw = dict(val_stride=0, ratio=1, cache_dir=tmp_path / "cache")
    full = LunaDataset(tiny_luna["root"], **kw)
    drop = {full.candidates[i] for i in full.neg_ndx[:3]}
    ds = LunaDataset(tiny_luna["root"], keep=lambda cands: np.array([c not in drop for c in cands]), **kw)
    assert ds.n_left_out == 3 and len(ds.candidates) == len(full.candidates) - 3
    assert not drop & set(ds.candidates) and len(ds.pos_ndx) == len(full.pos_ndx)
    # The cache entries still hold every candidate of each scan, so both datasets share them.
    assert ds.series_digests == full.series_digests
    for i in range(len(ds.candidates)):
        j = full.candidates.index(ds.candidates[i])
        np.testing.assert_array_equal(ds.read_crop(i)[0], full.read_crop(j)[0])
    with pytest.raises(DataError, match="empty"):
        LunaDataset(tiny_luna["root"], keep=lambda cands: np.zeros(len(cands), bool), **kw)

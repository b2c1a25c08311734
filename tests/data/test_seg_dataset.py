"""The segmentation cache and its training crops."""
import os
import pickle

import numpy as np
import pytest

from luna.data.masks import MASK_HU
from luna.data.seg_cache import SegCache, fill_seg_cache
from luna.data.seg_dataset import SegSampling, SegScan, SegTrainDataset, context_indices
from luna.data.seg_grid import SegGrid
from luna.io.scans import find_series_files
from luna.luna16.csvfiles import read_annotations
from luna.synth import make_dataset


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("segdata") / "luna", n_series=2, seed=5, size="tiny").out_dir
    paths, nodules = find_series_files(root), read_annotations(root / "annotations.csv")
    return [SegScan(uid, paths[uid], nodules[uid]) for uid in sorted(paths)]


def test_cache_entries_are_built_once_and_rebuilt_when_the_scan_changes(scans, tmp_path):
    cache = SegCache(tmp_path, SegGrid(3.0, 2.5))
    jobs = [(s.series_uid, s.path, s.nodules) for s in scans]
    assert fill_seg_cache(cache, jobs) == 2 and fill_seg_cache(cache, jobs) == 0
    entry = cache.open(*jobs[0])
    assert entry.volume.hu_a.shape == entry.mask_a.shape and entry.mask_a.any()
    assert len(entry.nodules_irc) == len(scans[0].nodules)
    raw = scans[0].path.with_suffix(".raw")
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))
    assert not cache.is_valid(*jobs[0]) and fill_seg_cache(cache, jobs) == 1


def test_a_crop_depends_on_its_index_only_and_its_mask_lies_on_dense_voxels(scans, tmp_path):
    cache = SegCache(tmp_path, SegGrid(3.0, 2.5))
    ds = SegTrainDataset(cache, scans, epoch_size=40, sampling=SegSampling(noise_hu=0.0, random_share=0.0), seed=3)
    x, mask, ndx = ds[7]
    assert x.shape == (7, 64, 64) and mask.shape == (1, 64, 64) and ndx == 7
    worker = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker holds
    np.testing.assert_array_equal(worker[7][0], x)
    marked = [ds[i] for i in range(40)]
    assert all(m.any() for _, m, _ in marked)  # no random crops: every crop shows its nodule
    assert all((xx[3][m[0] > 0] > MASK_HU).all() for xx, m, _ in marked)  # the mask sits on its slice
    ds.set_epoch(2)
    assert not np.array_equal(ds[7][0], x)
    noisy = SegTrainDataset(cache, scans, 40, SegSampling(random_share=1.0), seed=3)
    assert sum(bool(m.any()) for _, m, _ in (noisy[i] for i in range(40))) < 20


def test_context_repeats_the_end_slices():
    np.testing.assert_array_equal(context_indices(5, np.array([0, 4]), 2), [[0, 0, 0, 1, 2], [2, 3, 4, 4, 4]])

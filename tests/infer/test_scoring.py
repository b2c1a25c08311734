"""Scoring scans straight from disk: batching, eval mode, read-ahead and errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from luna.data.crops import crop_candidate
import torch

from luna.data.crops import CropConfig
from luna.io.ct import Ct
from luna.runtime.device import StepConfig
from luna.errors import DataError
from luna.infer.scoring import ScanJob, iter_scan_scores, score_scan

from tests.conftest import make_spread_model, make_tiny_luna

CPU_FP32 = StepConfig(torch.device("cpu"), "fp32", channels_last=False)
# A smaller crop than the default keeps these tests fast; score_scan must honour it.
CROP_IRC = (16, 24, 24)
CROP = CropConfig(shape_irc=CROP_IRC)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return make_tiny_luna(tmp_path_factory.mktemp("scoring") / "luna", n_series=3, negatives_per_scan=4)


def scan_jobs(data: dict) -> list[ScanJob]:
    by_uid: dict[str, list] = {uid: [] for uid in data["uids"]}
    for uid, x, y, z, _ in data["candidates"]:
        by_uid[uid].append((x, y, z))
    root: Path = data["root"]
    return [ScanJob(uid, next(root.glob(f"subset*/{uid}.mhd")), centers) for uid, centers in by_uid.items()]


def reference_scores(model: torch.nn.Module, ct: Ct, centers_xyz) -> np.ndarray:
    """One candidate at a time, cropped by hand, in fp32."""
    out = []
    with torch.no_grad():
        for center_xyz in centers_xyz:
            crop, _ = crop_candidate(ct, center_xyz, CROP_IRC)
            x = torch.from_numpy(crop.astype(np.float32))[None, None]
            out.append(model(x)[1][0, 1].item())
    return np.array(out)


def test_score_scan_matches_single_crops_for_any_batch_size(data):
    model = make_spread_model(crop_shape_irc=CROP_IRC)
    job = scan_jobs(data)[0]
    ct = Ct(job.scan_path)
    expected = reference_scores(model, ct, job.centers_xyz)
    # Saturated probabilities would make the comparison prove nothing.
    assert ((0.01 < expected) & (expected < 0.99)).all() and expected.std() > 0.01, expected
    for batch_size in (1, 3, 64):
        got = score_scan(model, ct, job.centers_xyz, CPU_FP32, batch_size=batch_size, crop=CROP)
        assert got.dtype == np.float64 and got.shape == (len(job.centers_xyz),)
        np.testing.assert_allclose(got, expected, atol=1e-5)


class _SureModel(torch.nn.Module):
    """Calls every crop a nodule by a logit margin of 20 or more, larger the brighter the crop:
    beyond what float32 probabilities can tell apart from 1."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        margin = 20 + (x.float().mean(dim=(1, 2, 3, 4)) + 1000) / 100
        logits = torch.stack([torch.zeros_like(margin), margin], dim=1)
        return logits, torch.softmax(logits, dim=1)


def test_sure_scores_keep_their_order(data):
    """Probabilities near 1 come from the logit margin in float64: the ranking the FROC reads is
    the model's, not a tie at 1.0."""
    job = scan_jobs(data)[0]
    ct = Ct(job.scan_path)
    got = score_scan(_SureModel(), ct, job.centers_xyz, CPU_FP32, crop=CROP)
    margins = [20 + (crop_candidate(ct, c, CROP_IRC)[0].astype(np.float64).mean() + 1000) / 100
               for c in job.centers_xyz]
    assert (got < 1).all() and len(set(got.tolist())) == len(got)
    assert np.argsort(got).tolist() == np.argsort(margins).tolist()


def test_score_scan_puts_the_model_in_eval_mode(data):
    model = make_spread_model(crop_shape_irc=CROP_IRC)
    job = scan_jobs(data)[0]
    ct = Ct(job.scan_path)
    expected = reference_scores(model, ct, job.centers_xyz)
    model.train()  # batch statistics would make scores depend on the batch
    got = score_scan(model, ct, job.centers_xyz, CPU_FP32, batch_size=4, crop=CROP)
    assert not model.training
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_score_scan_channels_last_and_empty(data):
    model = make_spread_model(crop_shape_irc=CROP_IRC)
    job = scan_jobs(data)[1]
    ct = Ct(job.scan_path)
    plain = score_scan(model, ct, job.centers_xyz, CPU_FP32, crop=CROP)
    model_cl = make_spread_model(crop_shape_irc=CROP_IRC).to(memory_format=torch.channels_last_3d)
    cl_cfg = StepConfig(torch.device("cpu"), "fp32", channels_last=True)
    np.testing.assert_allclose(score_scan(model_cl, ct, job.centers_xyz, cl_cfg, crop=CROP), plain, atol=1e-5)
    assert score_scan(model, ct, [], CPU_FP32, crop=CROP).shape == (0,)


def test_score_scan_rejects_a_centre_outside_the_scan(data):
    job = scan_jobs(data)[0]
    ct = Ct(job.scan_path)
    with pytest.raises(DataError, match="outside the scan"):
        score_scan(make_spread_model(crop_shape_irc=CROP_IRC), ct, [job.centers_xyz[0], (1e4, 1e4, 1e4)], CPU_FP32,
                   crop=CROP)


@pytest.mark.parametrize("prefetch", [True, False])
def test_iter_scan_scores_in_job_order(data, prefetch):
    model = make_spread_model(crop_shape_irc=CROP_IRC)
    jobs = scan_jobs(data)[::-1]
    results = list(iter_scan_scores(model, jobs, CPU_FP32, batch_size=5, crop=CROP, prefetch=prefetch))
    assert [job.series_uid for job, _ in results] == [job.series_uid for job in jobs]
    for job, probabilities in results:
        expected = score_scan(model, Ct(job.scan_path), job.centers_xyz, CPU_FP32, crop=CROP)
        np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert list(iter_scan_scores(model, [], CPU_FP32, prefetch=prefetch)) == []


@pytest.mark.parametrize("prefetch", [True, False])
def test_unreadable_scan_raises_on_its_turn(tmp_path, prefetch):
    data = make_tiny_luna(tmp_path / "luna", n_series=2, negatives_per_scan=1)
    jobs = scan_jobs(data)
    jobs[1].scan_path.with_suffix(".raw").unlink()
    scored = iter_scan_scores(make_spread_model(crop_shape_irc=CROP_IRC), jobs, CPU_FP32, crop=CROP,
                              prefetch=prefetch)
    first_job, first = next(scored)  # the good scan comes out although the next read failed
    assert first_job is jobs[0] and first.shape == (len(jobs[0].centers_xyz),)
    with pytest.raises(DataError, match=r"\.raw is missing"):
        next(scored)


@pytest.mark.parametrize("views_top", [1, 3])
def test_views_go_to_the_best_candidates_by_one_view(data, views_top):
    # CROP's rows and columns are equal, so all 8 views apply.
    model = make_spread_model(crop_shape_irc=CROP_IRC)
    job = scan_jobs(data)[0]
    ct = Ct(job.scan_path)
    one_view = score_scan(model, ct, job.centers_xyz, CPU_FP32, crop=CROP, views=1)
    all_views = score_scan(model, ct, job.centers_xyz, CPU_FP32, crop=CROP, views=8)
    assert np.abs(one_view - all_views).max() > 1e-4, "the views must change the scores, or this proves nothing"
    got = score_scan(model, ct, job.centers_xyz, CPU_FP32, crop=CROP, views=8, views_top=views_top)
    top = np.argsort(-one_view, kind="stable")[:views_top]
    rest = np.setdiff1d(np.arange(len(one_view)), top)
    np.testing.assert_allclose(got[top], all_views[top], atol=1e-6)
    np.testing.assert_allclose(got[rest], one_view[rest], atol=1e-6)
    # As many as the scan has, or more: every candidate gets every view.
    np.testing.assert_allclose(score_scan(model, ct, job.centers_xyz, CPU_FP32, crop=CROP, views=8,
                                          views_top=len(one_view)), all_views, atol=1e-6)

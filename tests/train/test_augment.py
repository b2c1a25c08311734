"""Tests for luna.augment: each component against its exact expected effect, on small batches."""
from __future__ import annotations

import math

import pytest
import torch

import torch.nn.functional as F

from luna.train.augment import AugmentConfig, augment_batch, build_theta, draw_params, sampling_grid
from luna.errors import UsageError

OFF = dict(flip=False, offset=0.0, scale=0.0, rotate=False, noise=0.0, contrast=0.0)


def only(**kwargs) -> AugmentConfig:
    return AugmentConfig(**{**OFF, **kwargs})


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hu_batch(n: int = 4, shape=(16, 24, 24), seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, 1, *shape, generator=gen(seed)) * 2000 - 1000)


def blob(shape, centre_irc, sigma: float, n: int = 1) -> torch.Tensor:
    """A Gaussian blob of height 1000 on a 0 background (so centroids are easy to compute)."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre_irc))
    return (1000 * torch.exp(-dist2 / (2 * sigma ** 2))).expand(n, 1, *shape).clone()


def centroid(volume: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted (I, R, C) centre of a (1, I, R, C) volume."""
    v = volume[0].double()
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in v.shape], indexing="ij")
    return torch.stack([(g * v).sum() / v.sum() for g in grids])


def test_config_defaults_and_validation():
    config = AugmentConfig()
    values = (config.flip, config.offset, config.scale, config.rotate, config.noise, config.contrast)
    assert values == (True, 0.03, 0.2, True, 25.0, 0.6)
    assert config.enabled and config.geometric
    assert not AugmentConfig(**OFF).enabled
    assert only(noise=5.0).enabled and not only(noise=5.0).geometric
    assert only(contrast=0.5).enabled and not only(contrast=0.5).geometric
    for bad in (dict(offset=-0.1), dict(scale=1.0), dict(noise=-1.0), dict(noise=math.inf),
                dict(contrast=1.0), dict(contrast=-0.1)):
        with pytest.raises(UsageError):
            AugmentConfig(**bad)


def test_all_off_returns_the_batch():
    batch = hu_batch()
    assert augment_batch(batch, AugmentConfig(**OFF), gen(0)) is batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shape_dtype_device_kept_and_input_untouched(dtype):
    batch = hu_batch().to(dtype)
    before = batch.clone()
    out = augment_batch(batch, AugmentConfig(), gen(1))
    assert out.shape == batch.shape and out.dtype == dtype and out.device == batch.device
    assert torch.equal(batch, before)
    assert not torch.equal(out, batch)


def test_bf16_matches_float32_up_to_rounding():
    batch = hu_batch()
    out32 = augment_batch(batch, AugmentConfig(), gen(2))
    out16 = augment_batch(batch.to(torch.bfloat16), AugmentConfig(), gen(2))
    # bf16 keeps 8 significant bits: +/-4 HU near 1000, plus the input's own rounding.
    torch.testing.assert_close(out16.float(), out32, rtol=0.02, atol=8.0)


def test_channels_last_input_same_result():
    # With more than one channel channels_last_3d really changes the strides.
    batch = torch.rand(2, 3, 8, 12, 12, generator=gen(3)) * 2000 - 1000
    cl = batch.contiguous(memory_format=torch.channels_last_3d)
    out = augment_batch(cl, AugmentConfig(), gen(4))
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(out, augment_batch(batch, AugmentConfig(), gen(4)))


def test_same_seed_same_output_other_seed_other_output():
    batch = hu_batch()
    a = augment_batch(batch, AugmentConfig(), gen(5))
    b = augment_batch(batch, AugmentConfig(), gen(5))
    c = augment_batch(batch, AugmentConfig(), gen(6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_switching_a_component_off_keeps_the_other_draws():
    full = draw_params(6, AugmentConfig(), gen(7))
    no_rotate = draw_params(6, AugmentConfig(rotate=False), gen(7))
    assert torch.equal(full.flip, no_rotate.flip) and torch.equal(full.offset, no_rotate.offset)
    assert full.noise_seed == no_rotate.noise_seed
    assert torch.all(no_rotate.angle == 0)
    assert torch.all(full.angle >= 0) and torch.all(full.angle < 2 * math.pi)


def test_contrast_draws_come_last():
    plain = draw_params(6, AugmentConfig(contrast=0.0), gen(7))
    faded = draw_params(6, AugmentConfig(contrast=0.6), gen(7))
    for name in ("flip", "offset", "scale", "angle"):
        assert torch.equal(getattr(plain, name), getattr(faded, name))
    assert plain.noise_seed == faded.noise_seed
    assert torch.all(plain.contrast == 1.0)


def test_contrast_only_fades_towards_air_for_about_half_the_samples():
    n = 400
    batch = torch.full((n, 1, 4, 6, 6), 40.0)
    batch[:, :, 0] = -1000.0  # a slice of air
    out = augment_batch(batch, only(contrast=0.6), gen(15))
    assert torch.all(out[:, :, 0] == -1000.0)  # air stays air
    # Each sample is scaled by one factor a in [0.4, 1]: 40 HU -> -1000 + a * 1040.
    factor = (out[:, 0, 1:] + 1000.0) / 1040.0
    per_sample = factor.flatten(1)
    torch.testing.assert_close(per_sample.min(1).values, per_sample.max(1).values)
    a = per_sample[:, 0]
    assert a.min() >= 0.4 - 1e-6 and a.max() <= 1.0 + 1e-6
    unchanged = (a > 1 - 1e-6).float().mean().item()
    assert 0.4 < unchanged < 0.6  # CONTRAST_PROBABILITY = 0.5
    faded = a[a < 1 - 1e-6]
    assert faded.min() < 0.45 and faded.max() > 0.95  # uniform over the whole range


def test_flip_only_is_an_exact_flip_of_the_drawn_axes():
    batch = hu_batch(n=8)
    config = only(flip=True)
    params = draw_params(8, config, gen(8))
    out = augment_batch(batch, config, gen(8))
    flipped_axes = set()
    for n in range(8):
        dims = [axis + 1 for axis in range(3) if params.flip[n, axis]]
        flipped_axes.update(dims)
        # Sampling lands exactly on voxel centres; only float rounding of the grid remains.
        torch.testing.assert_close(out[n], torch.flip(batch[n], dims), rtol=0, atol=0.02)
    assert flipped_axes == {1, 2, 3}  # the seed exercises every axis


def test_noise_only_has_requested_std():
    batch = torch.zeros(4, 1, 16, 32, 32)
    out = augment_batch(batch, only(noise=25.0), gen(9))
    assert out.std().item() == pytest.approx(25.0, rel=0.02)
    assert abs(out.mean().item()) < 0.5


def test_offset_moves_a_blob_by_the_drawn_fraction_of_the_crop():
    shape = (16, 24, 32)
    centre = (7.5, 11.5, 15.5)
    batch = blob(shape, centre, sigma=1.5, n=6)
    config = only(offset=0.1)
    params = draw_params(6, config, gen(10))
    out = augment_batch(batch, config, gen(10))
    for n in range(6):
        expected = torch.tensor(centre, dtype=torch.float64) + params.offset[n].double() * torch.tensor(shape)
        torch.testing.assert_close(centroid(out[n]), expected, rtol=0, atol=0.02)
    assert params.offset.abs().max() > 0.05  # the shifts tested are several voxels


def test_scale_only_changes_size_not_centre():
    shape = (16, 32, 32)
    centre = tuple((s - 1) / 2 for s in shape)
    batch = blob(shape, centre, sigma=3.0, n=4)
    config = only(scale=0.2)
    params = draw_params(4, config, gen(11))
    out = augment_batch(batch, config, gen(11))
    for n in range(4):
        torch.testing.assert_close(centroid(out[n]), torch.tensor(centre, dtype=torch.float64),
                                   rtol=0, atol=1e-3)
        # Sampling scale s makes the content 1/s as large: the blob's volume scales by 1/prod(s).
        expected_mass = batch[n].double().sum() / params.scale[n].double().prod()
        assert out[n].double().sum().item() == pytest.approx(expected_mass.item(), rel=0.02)


def test_rotation_keeps_a_symmetric_blob_and_its_centre():
    shape = (8, 48, 48)
    centre = (3.5, 23.5, 23.5)  # the geometric centre: rotations turn about it
    batch = blob(shape, centre, sigma=6.0, n=4)
    out = augment_batch(batch, only(rotate=True), gen(12))
    for n in range(4):
        assert out[n].mean().item() == pytest.approx(batch[n].mean().item(), rel=0.005)
        torch.testing.assert_close(centroid(out[n]), torch.tensor(centre, dtype=torch.float64),
                                   rtol=0, atol=0.01)


@pytest.mark.parametrize("shape", [(8, 48, 48), (8, 32, 48)])
def test_rotation_turns_an_off_centre_blob_by_the_drawn_angle(shape):
    # R != C checks the aspect correction: the turn must be rigid in voxels, not a shear.
    mid = [(s - 1) / 2 for s in shape]
    radius = 10.0
    batch = blob(shape, (mid[0], mid[1], mid[2] + radius), sigma=1.5, n=4)
    params = draw_params(4, only(rotate=True), gen(13))
    out = augment_batch(batch, only(rotate=True), gen(13))
    for n in range(4):
        angle = params.angle[n].double()
        # From +C towards +R by the drawn angle.
        expected = torch.tensor([mid[0], mid[1] + radius * torch.sin(angle),
                                 mid[2] + radius * torch.cos(angle)], dtype=torch.float64)
        torch.testing.assert_close(centroid(out[n]), expected, rtol=0, atol=0.05)


def test_theta_is_identity_when_everything_is_neutral():
    params = draw_params(3, AugmentConfig(**OFF), gen(14))
    theta = build_theta(params, (32, 48, 48))
    assert theta.dtype == torch.float32 and theta.shape == (3, 3, 4)
    torch.testing.assert_close(theta, torch.eye(3, 4).expand(3, 3, 4))


def test_rejects_non_5d_batch():
    with pytest.raises(ValueError):
        augment_batch(torch.zeros(2, 16, 24, 24), AugmentConfig(), gen(0))


@pytest.mark.parametrize("size", [(4, 1, 32, 48, 48), (3, 1, 5, 7, 9)])
def test_sampling_grid_equals_affine_grid(size):
    theta = torch.randn(size[0], 3, 4, generator=torch.Generator().manual_seed(1))
    expected = F.affine_grid(theta, list(size), align_corners=False)
    got = sampling_grid(theta, size)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)

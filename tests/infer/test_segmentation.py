"""segment_volume: the map of a whole scan, batch by batch, inside the lung region only."""
import numpy as np
import torch

from luna.infer.segmentation import segment_volume
from luna.models.unet import UNet2d
from luna.runtime.device import StepConfig


def _model() -> UNet2d:
    torch.manual_seed(0)
    model = UNet2d(channels=4).eval()
    with torch.no_grad():
        model.input_batchnorm.running_mean.fill_(-500.0)
        model.input_batchnorm.running_var.fill_(400.0 ** 2)
    return model


def test_map_has_the_volume_shape_whatever_the_batch_and_is_zero_outside_the_region():
    hu = np.random.default_rng(0).integers(-1000, 400, size=(9, 30, 37)).astype(np.int16)
    cfg = StepConfig(torch.device("cpu"))
    whole = segment_volume(_model(), hu, cfg, batch_size=4)
    assert whole.shape == hu.shape and whole.dtype == np.float32 and 0 <= whole.min() and whole.max() <= 1
    np.testing.assert_allclose(segment_volume(_model(), hu, cfg, batch_size=9), whole, atol=1e-6)
    region = (slice(2, 7), slice(5, 21), slice(10, 30))
    boxed = segment_volume(_model(), hu, cfg, batch_size=3, region=region)
    outside = np.ones(hu.shape, dtype=bool)
    outside[region] = False
    assert not boxed[outside].any() and boxed[region].any()
    # The model sees the scan around the box: a box as large as the scan gives the whole map.
    np.testing.assert_allclose(segment_volume(_model(), hu, cfg, region=(slice(0, 9), slice(0, 30), slice(0, 37))),
                               whole, atol=1e-6)

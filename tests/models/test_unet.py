"""The segmentation U-Net: shapes, the registry, checkpoints of either kind."""
import pytest
import torch
from torch import nn

from luna.errors import DataError
from luna.models.registry import MODELS, build_model, count_parameters, model_kind
from luna.models.unet import UNet2d
from luna.runtime.device import StepConfig, prepare_model


def test_output_is_one_probability_per_pixel_of_the_input():
    model = UNet2d().eval()
    assert model.input_batchnorm.num_features == 7 and model.pad_multiple == 4
    assert [block[0].out_channels for block in model.down] == [16, 32, 64]  # depth 3, 16 channels first
    with torch.no_grad():
        out = model(torch.randn(2, 7, 64, 48) * 300)
    assert out.shape == (2, 1, 64, 48) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_rebuilt_by_name_from_its_config_with_the_classifiers():
    model = UNet2d(context=2, depth=2, channels=4)
    rebuilt = build_model(model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert isinstance(rebuilt, UNet2d) and rebuilt.input_batchnorm.num_features == 5
    assert {"luna", "luna_bn", "luna_centre", "unet2d"} <= set(MODELS)
    assert model_kind("unet2d") == "segmentation" and model_kind("luna_centre") == "classifier"
    assert model_kind(None) == "classifier" and model_kind("resnet") is None
    assert count_parameters(rebuilt) == count_parameters(model)
    with pytest.raises(DataError, match="cannot build model 'unet2d'"):
        build_model({"name": "unet2d", "depth": 0})


def test_channels_last_and_bf16_give_the_same_map():
    torch.manual_seed(0)
    model = UNet2d().eval()
    with torch.no_grad():  # input statistics of HU, so that a fresh model's map is not saturated
        model.input_batchnorm.running_mean.fill_(-300.0)
        model.input_batchnorm.running_var.fill_(500.0 ** 2)
        model.head.weight.mul_(0.05)
    x = torch.randn(1, 7, 32, 32) * 300
    with torch.no_grad():
        reference = model(x)
        fast = prepare_model(build_model(model.config), "cpu", channels_last=True).eval()
        fast.load_state_dict(model.state_dict())
        cfg = StepConfig(torch.device("cpu"), "bf16", channels_last=True)
        with cfg.autocast():
            out = fast(cfg.to_device(x))
    assert isinstance(fast.head, nn.Conv2d) and out.dtype == torch.float32
    assert float((out - reference).abs().max()) < 0.05

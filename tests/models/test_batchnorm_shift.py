"""Tests for luna.models.batchnorm_shift: measuring batch norm inputs and shifting by them."""
import pytest
import torch
from torch import nn

from luna.models.batchnorm_shift import BatchNormStats, batch_norm_layers, measure, shifted
from luna.models.classifier import LunaTwoScaleModel

SHAPE = (1, 16, 24, 24)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = LunaTwoScaleModel(conv_channels=4, centre_channels=4, crop_shape_irc=SHAPE[1:])
    with torch.no_grad():
        model.tail_batchnorm.running_mean.fill_(-300.0)
        model.tail_batchnorm.running_var.fill_(400.0 ** 2)
    return model.eval()


def crops(n: int, seed: int, hu_mean: float = -300.0) -> torch.Tensor:
    return torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(seed)) * 400 + hu_mean


def test_measure_gives_each_layers_input_mean_and_variance_whatever_the_batching():
    model = small_model()
    x = crops(10, 0)
    whole = measure(model, [x])
    split = measure(model, [x[:3], x[3:7], x[7:]])
    assert whole.n_crops == split.n_crops == 10 and set(whole.mean) == set(batch_norm_layers(model))
    # The first layer's input is the crops themselves.
    torch.testing.assert_close(whole.mean["tail_batchnorm"], x.mean().reshape(1), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(whole.var["tail_batchnorm"], x.var(unbiased=False).reshape(1), rtol=1e-4, atol=1e-2)
    for name in whole.mean:
        torch.testing.assert_close(whole.mean[name], split.mean[name], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(whole.var[name], split.var[name], rtol=1e-5, atol=1e-5)
    assert not model.training


def test_a_scan_like_the_reference_scores_as_before_and_the_statistics_come_back():
    model = small_model()
    reference = measure(model, [crops(8, 1)])
    x = crops(4, 2)
    plain = model(x)[1]
    with shifted(model, reference, reference):
        torch.testing.assert_close(model(x)[1], plain)
    other = measure(model, [crops(8, 3, hu_mean=-100.0)])
    before = {name: (m.running_mean.clone(), m.running_var.clone()) for name, m in batch_norm_layers(model).items()}
    with pytest.raises(RuntimeError, match="inside"):
        with shifted(model, reference, other):
            tail = model.tail_batchnorm
            torch.testing.assert_close(tail.running_mean, before["tail_batchnorm"][0] + other.mean["tail_batchnorm"]
                                       - reference.mean["tail_batchnorm"])
            torch.testing.assert_close(tail.running_var, before["tail_batchnorm"][1] * other.var["tail_batchnorm"]
                                       / reference.var["tail_batchnorm"])
            assert not torch.allclose(model(x)[1], plain)
            raise RuntimeError("inside")
    for name, layer in batch_norm_layers(model).items():
        assert torch.equal(layer.running_mean, before[name][0]) and torch.equal(layer.running_var, before[name][1])


def test_statistics_travel_as_plain_tensors_and_a_missing_layer_is_named():
    model = small_model()
    stats = measure(model, [crops(2, 4)])
    back = BatchNormStats.from_dict(stats.to_dict())
    assert back.n_crops == 2 and all(torch.equal(back.var[k], stats.var[k]) for k in stats.var)
    del back.mean["tail_batchnorm"]
    with pytest.raises(ValueError, match="no statistics for layer.*tail_batchnorm"):
        with shifted(model, back, stats):
            pass

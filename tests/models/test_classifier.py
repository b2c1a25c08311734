"""Tests for luna.models.classifier: the reference architecture, its initialisation and the registry."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from luna.errors import DataError
from luna.models.classifier import CLASSIFIERS, LunaBlock, LunaModel
from luna.models.registry import build_model, count_parameters
from luna.models.views import predict_views
from luna.runtime.device import prepare_model


@pytest.fixture(scope="module")
def model() -> LunaModel:
    torch.manual_seed(0)
    return LunaModel()


def test_block_layers_and_shape():
    block = LunaBlock(1, 8)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv3d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 8), (8, 8)]
    assert all(c.kernel_size == (3, 3, 3) and c.padding == (1, 1, 1) and c.bias is not None for c in convs)
    assert block(torch.zeros(2, 1, 8, 6, 4)).shape == (2, 8, 4, 3, 2)


def test_architecture_matches_reference(model):
    assert isinstance(model.tail_batchnorm, nn.BatchNorm3d) and model.tail_batchnorm.num_features == 1
    blocks = [model.block1, model.block2, model.block3, model.block4]
    channels = [(b.conv1.in_channels, b.conv2.out_channels) for b in blocks]
    assert channels == [(1, 8), (8, 16), (16, 32), (32, 64)]
    assert (model.head_linear.in_features, model.head_linear.out_features) == (1152, 2)
    assert not any(isinstance(m, nn.BatchNorm3d) for b in blocks for m in b.modules())


def test_parameter_count(model):
    # Hand count: BN 2; convs (out*in*27 + out) per layer; head 1152*2 + 2.
    convs = [(1, 8), (8, 8), (8, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64)]
    expected = 2 + sum(o * i * 27 + o for i, o in convs) + 1152 * 2 + 2
    assert expected == 222_220
    assert count_parameters(model) == expected
    model.tail_batchnorm.weight.requires_grad_(False)
    try:
        assert count_parameters(model, trainable_only=True) == expected - 1
    finally:
        model.tail_batchnorm.weight.requires_grad_(True)


def test_forward_returns_logits_and_probabilities(model):
    model.eval()
    x = torch.randn(3, 1, 32, 48, 48) * 400
    with torch.no_grad():
        logits, probs = model(x)
    assert logits.shape == probs.shape == (3, 2)
    torch.testing.assert_close(probs, torch.softmax(logits, dim=1))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))


def test_kaiming_fan_out_weights(model):
    weight = model.block4.conv2.weight  # 110,592 values: a tight estimate of the std
    fan_out = 64 * 27
    assert weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.02)
    assert abs(weight.mean().item()) < 0.1 * math.sqrt(2 / fan_out)
    assert model.head_linear.weight.std().item() == pytest.approx(1.0, rel=0.05)  # fan_out = 2


def test_bias_has_mean_minus_bound_and_std_bound(model):
    # The reference's normal_(bias, -bound, bound) means bias / bound ~ N(-1, 1) in every layer:
    # pool all 242 standardised biases. A plain N(0, bound) would give a mean near 0.
    standardised = []
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.Linear)):
            fan_out = module.weight.shape[0] * module.weight[0, 0].numel()
            bound = 1 / math.sqrt(fan_out)
            standardised.append(module.bias.detach() / bound)
    values = torch.cat(standardised)
    assert values.numel() == 242
    assert values.mean().item() == pytest.approx(-1.0, abs=0.25)
    assert values.std().item() == pytest.approx(1.0, abs=0.2)


def test_config_roundtrip_through_json(model):
    config = json.loads(json.dumps(model.config))
    assert config == {"name": "luna", "in_channels": 1, "conv_channels": 8, "crop_shape_irc": [32, 48, 48]}
    rebuilt = build_model(config)
    assert type(rebuilt) is LunaModel
    rebuilt.load_state_dict(model.state_dict())  # same parameter names and shapes
    model.config["name"] = "changed"  # a copy: the model's own config stays intact
    assert model.config["name"] == "luna"


def test_other_sizes_and_variant():
    small = build_model({"name": "luna", "conv_channels": 4, "crop_shape_irc": [16, 32, 32]})
    assert small.head_linear.in_features == 32 * 1 * 2 * 2
    assert small(torch.zeros(2, 1, 16, 32, 32))[0].shape == (2, 2)
    variant = build_model({"name": "luna_bn"})
    assert variant.config["name"] == "luna_bn" and variant.config["batch_norm_from"] == 2
    # The tail norm, then two per block from block 2 on; block 1 keeps the reference's convs.
    assert sum(isinstance(m, nn.BatchNorm3d) for m in variant.modules()) == 1 + 6
    assert variant.block1.conv1.bias is not None and variant.block2.conv1.bias is None
    everywhere = build_model({"name": "luna_bn", "batch_norm_from": 1})
    assert sum(isinstance(m, nn.BatchNorm3d) for m in everywhere.modules()) == 1 + 8
    build_model(variant.config).load_state_dict(variant.state_dict())
    assert set(CLASSIFIERS) >= {"luna", "luna_bn"}


def test_a_checkpoint_of_a_removed_option_is_a_one_line_error():
    # --block-channels was an experiment, measured and removed: its checkpoints say so in one line.
    with pytest.raises(DataError, match="cannot build model 'luna_bn' from .*block_channels"):
        build_model({"name": "luna_bn", "block_channels": [8, 16, 64, 128]})


@pytest.mark.parametrize("config", [{"name": "resnet"}, {"name": "luna", "depth": 3},
                                    {"name": "luna", "crop_shape_irc": [8, 48, 48]},
                                    {"name": "luna_bn", "batch_norm_from": 5},
                                    {"name": "luna", "in_channels": 1, "crop_shape_irc": [32, 48]}])
def test_build_model_rejects_bad_config(config):
    with pytest.raises(DataError):
        build_model(config)


def test_channels_last_gives_same_output():
    torch.manual_seed(1)
    reference = LunaModel().eval()
    other = LunaModel().eval()
    other.load_state_dict(reference.state_dict())
    other = prepare_model(other, "cpu", channels_last=True)
    assert other.block2.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not other.block2.conv1.weight.is_contiguous()
    x = torch.randn(2, 1, 32, 48, 48) * 400
    with torch.no_grad():
        expected, _ = reference(x)
        got, _ = other(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_training_step_reduces_loss_on_a_tiny_batch():
    torch.manual_seed(2)
    net = prepare_model(LunaModel(conv_channels=4, crop_shape_irc=(16, 16, 16)), "cpu", channels_last=False)
    x = torch.randn(8, 1, 16, 16, 16) * 300
    y = torch.tensor([0, 1] * 4)
    x[y == 1, :, 6:10, 6:10, 6:10] += 800  # a learnable "nodule"
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(15):
        logits, _ = net(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_probabilities_are_float32_under_bf16_autocast():
    # bf16 probabilities tie near 1.0 and ruin the FROC ranking; the head must stay float32.
    torch.manual_seed(0)
    model = LunaModel().train()  # batch statistics: an untrained model in eval mode saturates
    x = torch.randn(64, 1, 32, 48, 48) * 400
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, probs = model(x)
    assert logits.dtype == torch.float32 and probs.dtype == torch.float32
    assert len(set(probs[:, 1].tolist())) == 64


def test_predict_views_average_the_symmetric_views():
    torch.manual_seed(0)
    model = LunaModel(conv_channels=4, crop_shape_irc=(16, 16, 16)).eval()
    x = torch.randn(3, 1, 16, 16, 16)
    with torch.no_grad():
        plain = model(x)
        for got, want in zip(predict_views(model, x, 1), plain):
            torch.testing.assert_close(got, want)
        # 2 views: the crop and its 180-degree turn in the (R, C) plane.
        turned = torch.rot90(x, 2, dims=(3, 4))
        logits, probs = predict_views(model, x, 2)
        torch.testing.assert_close(logits, (plain[0] + model(turned)[0]) / 2)
        torch.testing.assert_close(probs, torch.softmax(logits, dim=1))
        # The 8-view mean does not depend on which of the views comes in.
        torch.testing.assert_close(predict_views(model, torch.rot90(x, 1, dims=(3, 4)), 8)[0],
                                   predict_views(model, x, 8)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="views must be one of"):
        predict_views(model, x, 3)
    with pytest.raises(ValueError, match="square crops"):
        predict_views(model, torch.randn(1, 1, 16, 16, 32), 8)


def test_centre_model_reads_the_centre_at_full_resolution():
    torch.manual_seed(0)
    model = build_model({"name": "luna_centre", "centre_channels": 4}).eval()
    assert model.head_linear.in_features == 64 * 2 * 3 * 3 + 16 * 2 * 3 * 3
    x = torch.randn(2, 1, 32, 48, 48) * 300
    logits, probabilities = model(x)
    assert logits.shape == probabilities.shape == (2, 2)
    # The stored config rebuilds the same network, and the branch sees the central 16 x 24 x 24.
    rebuilt = build_model(json.loads(json.dumps(model.config))).eval()
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(x)[0], logits)
    with torch.no_grad():
        branch = model.centre_blocks(model.tail_batchnorm(x)[..., 8:24, 12:36, 12:36])
    assert branch.shape == (2, 16, 2, 3, 3)
    # The same in channels-last memory (the CPU default), where the centre slice is made dense.
    last = prepare_model(build_model(model.config), "cpu", channels_last=True).eval()
    last.load_state_dict(model.state_dict())
    torch.testing.assert_close(last(x.contiguous(memory_format=torch.channels_last_3d))[0], logits,
                               rtol=1e-4, atol=1e-4)


def test_twoscale_model_reads_the_context_at_half_resolution():
    torch.manual_seed(0)
    model = build_model({"name": "luna_twoscale", "conv_channels": 4, "centre_channels": 4}).eval()
    # Three trunk blocks of 4, 8, 16 channels on the 16 x 24 x 24 average reach the 2 x 3 x 3
    # grid that four blocks reach at full resolution; the centre branch is luna_centre's.
    assert isinstance(model.block4, nn.Identity)
    assert model.head_linear.in_features == 16 * 2 * 3 * 3 + 16 * 2 * 3 * 3
    x = torch.randn(2, 1, 32, 48, 48) * 300
    logits, _ = model(x)
    with torch.no_grad():
        pooled = nn.functional.avg_pool3d(model.tail_batchnorm(x), 2)
        trunk = model.block3(model.block2(model.block1(pooled)))
    assert trunk.shape == (2, 16, 2, 3, 3)
    rebuilt = build_model(json.loads(json.dumps(model.config))).eval()
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(x)[0], logits)
    # Checkpoints of luna_centre from before context_pool existed rebuild at full resolution.
    old = build_model({"name": "luna_centre", "centre_channels": 4})
    assert old.config["context_pool"] == 1 and not isinstance(old.block4, nn.Identity)
    with pytest.raises(DataError, match="context_pool must be 1 or 2"):
        build_model({"name": "luna_centre", "context_pool": 4})

import argparse

import numpy as np
import pytest
import torch

from luna.errors import UsageError
from luna.recipe import HardNegativeMiner, add_recipe_args, augment_config, build_optimizer, build_scheduler, \
    resolve_performance


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_recipe_args(parser)
    return parser.parse_args(list(argv))


def test_defaults_are_the_working_recipe():
    a = _args()
    assert (a.model, a.optimizer, a.balanced, a.augmented, a.lr_schedule) == ("luna_centre", "adamw", 1, True, "cosine")
    assert a.hard_negatives == 0.5 and a.lr == 2e-3
    cfg = augment_config(a)
    assert cfg.flip and cfg.rotate and cfg.offset == 0.03 and cfg.scale == 0.2 and cfg.noise == 25.0
    assert cfg.contrast == 0.6
    assert augment_config(_args("--no-augmented")) is None
    assert augment_config(_args("--no-augment-flip", "--augment-offset", "0", "--augment-scale", "0",
                                "--no-augment-rotate", "--augment-noise", "0", "--augment-contrast", "0")) is None
    assert augment_config(_args("--no-augment-flip", "--augment-offset", "0", "--augment-scale", "0",
                                "--no-augment-rotate", "--augment-noise", "0")).contrast == 0.6


def test_reference_optimizer_by_flags():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, _args("--optimizer", "sgd", "--lr", "0.001", "--momentum", "0.99",
                                       "--weight-decay", "0"))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.001 and opt.param_groups[0]["momentum"] == 0.99
    assert build_scheduler(opt, _args("--lr-schedule", "constant"), 100) is None


def test_cosine_schedule_warms_up_then_decays_to_zero():
    model = torch.nn.Linear(3, 2)
    a = _args("--lr", "0.01", "--warmup-steps", "10")
    opt = build_optimizer(model, a)
    sched = build_scheduler(opt, a, 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.01)
    assert max(lrs) == pytest.approx(0.01) and lrs[-1] < 1e-4
    assert all(b <= a + 1e-12 for a, b in zip(lrs[9:], lrs[10:]))


def test_performance_auto_choices():
    perf = resolve_performance(_args(), torch.device("cpu"))
    assert perf.precision == "bf16" and perf.channels_last
    assert resolve_performance(_args("--precision", "fp32", "--channels-last", "off"), torch.device("cpu")) \
        .channels_last is False
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        resolve_performance(_args("--precision", "fp16"), torch.device("cpu"))


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
    with pytest.raises(UsageError):
        HardNegativeMiner(8, neg_ndx, fraction=1.5)

import pytest
import torch

from luna.train.recipe import build_optimizer, build_scheduler


def test_reference_optimizer():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, "sgd", lr=0.001, momentum=0.99, weight_decay=0)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.001 and opt.param_groups[0]["momentum"] == 0.99
    assert build_scheduler(opt, "constant", 100, 100) is None
    assert isinstance(build_optimizer(model, "adamw", 2e-3, weight_decay=1e-4), torch.optim.AdamW)
    with pytest.raises(ValueError):
        build_optimizer(model, "lamb", 1e-3)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, "adamw", lr=0.01)
    sched = build_scheduler(opt, "cosine", warmup_steps=10, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.01)
    assert max(lrs) == pytest.approx(0.01) and lrs[-1] < 1e-4
    assert all(b <= a + 1e-12 for a, b in zip(lrs[9:], lrs[10:]))

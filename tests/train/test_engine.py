"""The per-sample records of the training and validation loops."""
import torch

from luna.runtime.device import StepConfig
from luna.train.engine import (METRICS_LABEL_NDX, METRICS_LOSS_NDX, METRICS_PRED_NDX, epoch_metrics, evaluate,
                               train_one_epoch)

CPU_FP32 = StepConfig(torch.device("cpu"), "fp32", channels_last=False)


class _SureModel(torch.nn.Module):
    """Calls every crop a nodule by a logit margin of 20 or more, larger the brighter the crop:
    beyond what a float32 softmax can tell apart from 1."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        margin = 20 + self.scale * x.float().mean(dim=(1, 2, 3, 4))
        logits = torch.stack([torch.zeros_like(margin), margin], dim=1)
        return logits, torch.softmax(logits, dim=1)


def _batches(brightness: list[list[float]]) -> list[tuple]:
    """Batches of 2 x 2 x 2 crops of the given mean values, labelled nodule when the value is odd."""
    batches, ndx = [], 0
    for values in brightness:
        crops = torch.tensor(values).view(-1, 1, 1, 1, 1).expand(-1, 1, 2, 2, 2).contiguous()
        labels = torch.tensor([int(v) % 2 for v in values])
        onehot = torch.nn.functional.one_hot(labels, 2)
        batches.append((crops, onehot, ["s"] * len(values), torch.zeros(len(values), 3),
                        torch.arange(ndx, ndx + len(values))))
        ndx += len(values)
    return batches


def test_validation_ranks_sure_candidates_as_the_model_does():
    """Margins of 20+ are all 1.0 in float32: the records carry float64 probabilities from the
    logits, so the FROC of training's validation reads the model's order, not a tie."""
    values = [[3.0, 0.0, 5.0], [1.0, 4.0]]
    metrics_t, ndx = evaluate(_SureModel(), _batches(values), CPU_FP32, epoch=1)
    assert metrics_t.dtype == torch.float64 and metrics_t.shape == (3, 5)
    assert ndx.tolist() == [0, 1, 2, 3, 4]
    probs = metrics_t[METRICS_PRED_NDX]
    assert (probs < 1).all() and len(set(probs.tolist())) == 5
    flat = [v for batch in values for v in batch]
    assert torch.argsort(probs).tolist() == sorted(range(5), key=flat.__getitem__)
    assert metrics_t[METRICS_LABEL_NDX].tolist() == [1, 0, 1, 1, 0]
    # The loss of a "nodule" called with margin m is log(1 + e^-m), of a non-nodule about m.
    assert metrics_t[METRICS_LOSS_NDX][1].item() > 19 and metrics_t[METRICS_LOSS_NDX][0].item() < 1e-8


def test_training_records_the_same_rows_and_empty_loaders_give_none():
    model = _SureModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    metrics_t, ndx = train_one_epoch(model, _batches([[1.0, 2.0]]), optimizer, None, None, CPU_FP32, epoch=1)
    assert metrics_t.dtype == torch.float64 and ndx.tolist() == [0, 1]
    assert epoch_metrics(metrics_t)["loss/all"] > 0
    empty_t, empty_ndx = evaluate(model, [], CPU_FP32, epoch=1)
    assert empty_t.shape == (3, 0) and empty_ndx.numel() == 0

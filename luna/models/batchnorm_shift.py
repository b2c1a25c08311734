"""Scan-by-scan correction of batch-norm statistics: what a scan of another acquisition shifts.

A batch norm layer normalises its input with the mean and variance it saw in training. A scan
from another scanner (a sharper kernel, thicker slices) moves those feature statistics, and the
layer then passes on features that are off-centre and mis-scaled for every crop of that scan.
The scan's own candidates say by how much, without any label: the mean and variance of each
layer's input over a few hundred of them, compared with the same over the training scans'
candidates, in the same natural mix of (mostly) non-nodules. Each layer's running statistics
are moved by that difference while the scan is scored, then put back:

    mean' = running_mean + (mean_scan - mean_training)
    var'  = running_var  * (var_scan / var_training)

Both sides are measured on the same kind of population, so on a scan like the training ones
the correction is close to nothing; the running statistics themselves (from the training's
balanced, augmented batches) are never replaced. This is test-time adaptation of the
normalisation statistics (the "AdaBN" idea), as a shift relative to a reference rather than a
replacement. docs/experiments.md measures it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import nn

# Candidates of a scan whose crops measure its statistics: enough for per-channel means and
# variances over every voxel of the crops, a small share of a scan's ~1,000.
SCAN_SAMPLE = 256
# Training candidates the reference is measured on, at the end of each epoch.
REFERENCE_SAMPLE = 3000
# Floor of a reference variance, so a channel dead in training cannot divide by zero.
_MIN_VAR = 1e-6


@dataclass
class BatchNormStats:
    """The per-channel mean and variance of each batch norm layer's input, by layer name."""

    mean: dict[str, torch.Tensor]
    var: dict[str, torch.Tensor]
    n_crops: int

    def to_dict(self) -> dict[str, Any]:
        """Tensors, names and an int: what a weights-only checkpoint load accepts."""
        return {"mean": {k: v.cpu() for k, v in self.mean.items()},
                "var": {k: v.cpu() for k, v in self.var.items()}, "n_crops": self.n_crops}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchNormStats:
        return cls(dict(data["mean"]), dict(data["var"]), int(data["n_crops"]))


def reference_of(ckpt: dict[str, Any]) -> BatchNormStats | None:
    """A checkpoint's ``batchnorm_reference``, or None for one written before it existed."""
    data = ckpt.get("batchnorm_reference")
    return BatchNormStats.from_dict(data) if isinstance(data, dict) else None


def batch_norm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The model's batch norm layers by their module name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)}


@torch.no_grad()
def measure(model: nn.Module, batches: Iterable[torch.Tensor]) -> BatchNormStats:
    """Mean and variance of every batch norm layer's input over all the crops of ``batches``.

    The model runs in eval mode (its outputs are not used); sums are kept in float64 over
    batch and voxels, so the result does not depend on how the crops are batched.
    """
    layers = batch_norm_layers(model)
    sums: dict[str, list] = {name: [0.0, 0.0, 0] for name in layers}

    def record(name: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().double()
            dims = [0, *range(2, x.dim())]
            entry = sums[name]
            entry[0] = entry[0] + x.sum(dims)
            entry[1] = entry[1] + (x * x).sum(dims)
            entry[2] += x.numel() // x.shape[1]
        return hook

    handles = [layer.register_forward_pre_hook(record(name)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    n_crops = 0
    try:
        for batch in batches:
            model(batch)
            n_crops += batch.shape[0]
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if n_crops == 0:
        raise ValueError("no crops to measure batch norm statistics on")
    mean = {name: (s / n).float() for name, (s, _, n) in sums.items()}
    var = {name: (q / n - (s / n) ** 2).clamp_min(0).float() for name, (s, q, n) in sums.items()}
    return BatchNormStats(mean, var, n_crops)


@contextmanager
def shifted(model: nn.Module, reference: BatchNormStats, scan: BatchNormStats) -> Iterator[None]:
    """Inside the block, every batch norm layer's running statistics are moved by how ``scan``
    differs from ``reference``; on leaving they are restored exactly."""
    layers = batch_norm_layers(model)
    missing = set(layers) - set(reference.mean)
    if missing:
        raise ValueError(f"the reference has no statistics for layer(s) {', '.join(sorted(missing))}")
    saved = {name: (layer.running_mean.clone(), layer.running_var.clone()) for name, layer in layers.items()}
    try:
        for name, layer in layers.items():
            mean, var = layer.running_mean, layer.running_var
            mean += (scan.mean[name] - reference.mean[name]).to(mean)
            var *= (scan.var[name] / reference.var[name].clamp_min(_MIN_VAR)).to(var)
        yield
    finally:
        for name, layer in layers.items():
            layer.running_mean.copy_(saved[name][0])
            layer.running_var.copy_(saved[name][1])

"""A scan -> nodule probability per voxel: the segmentation model over every axial slice.

The model sees each slice of a :class:`~luna.data.seg_grid.GridVolume` with its context slices
(edge slices repeated at the ends, as in training), a batch of slices at a time, in inference
mode at the device's speed settings; slices are padded with air to a size the U-Net takes and
the padding is cut off again. Memory: the volume, one batch, and the float32 map it fills.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from luna.data.seg_dataset import context_indices
from luna.luna16.sample import HU_MIN
from luna.runtime.device import StepConfig

# Pixels of context around the box segmented: what separates a training crop's nodule from the
# crop's edge (a 64-pixel crop anywhere in a 96-pixel window around it).
CONTEXT_PX = 16


@torch.inference_mode()
def segment_volume(model: nn.Module, hu_a: np.ndarray, step_cfg: StepConfig, batch_size: int = 16,
                   region: tuple[slice, slice, slice] | None = None) -> np.ndarray:
    """Nodule probability of every voxel of ``hu_a`` (0 outside ``region``).

    Args:
        model: a :class:`~luna.models.unet.UNet2d` (``context`` and ``pad_multiple``), on
            ``step_cfg.device``; it is switched to eval mode so that batch norm uses its
            running statistics.
        hu_a: (I, R, C) HU on the grid the model was trained on.
        step_cfg: device, autocast precision and memory format.
        batch_size: slices per forward pass.
        region: the box to segment (:func:`luna.data.seg_grid.lung_region`); None: all of it.
            The model is shown the scan around the box too (slices above and below, and
            CONTEXT_PX pixels on each side), as if the box were not there.

    Returns:
        float32 (I, R, C) probabilities in [0, 1].
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    out = np.zeros(hu_a.shape, dtype=np.float32)
    slices, keep_rows, keep_cols = region or tuple(slice(0, n) for n in hu_a.shape)
    if min(s.stop - s.start for s in (slices, keep_rows, keep_cols)) <= 0:
        return out
    # The model sees CONTEXT_PX of the scan beyond the box on every side (near the edge of what
    # it is shown, it has seen no training crop), and sides the U-Net takes; air pads only
    # where the scan itself ends.
    rows, cols = (_widen(s, model.pad_multiple, n) for s, n in zip((keep_rows, keep_cols), hu_a.shape[1:]))
    n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
    pad_r, pad_c = -n_rows % model.pad_multiple, -n_cols % model.pad_multiple
    for start in range(slices.start, slices.stop, batch_size):
        index = np.arange(start, min(start + batch_size, slices.stop))
        # (B, 2c + 1, R, C): the context of each slice, cut to the box.
        batch = np.asarray(hu_a[context_indices(hu_a.shape[0], index, model.context), rows, cols])
        if pad_r or pad_c:
            batch = np.pad(batch, ((0, 0), (0, 0), (0, pad_r), (0, pad_c)), constant_values=HU_MIN)
        x = step_cfg.to_device(torch.from_numpy(batch))
        with step_cfg.autocast():
            probabilities = model(x)
        out[index, rows, cols] = probabilities[:, 0, :n_rows, :n_cols].float().cpu().numpy()
    # Only the box itself is the answer: the context around it was there to be seen.
    outside = np.ones(hu_a.shape[1:], dtype=bool)
    outside[keep_rows, keep_cols] = False
    out[:, outside] = 0.0
    return out


def _widen(span: slice, multiple: int, size: int) -> slice:
    """``span`` grown by CONTEXT_PX on both sides, then to a multiple of ``multiple`` voxels,
    inside [0, size) as far as it fits."""
    start, stop = max(span.start - CONTEXT_PX, 0), min(span.stop + CONTEXT_PX, size)
    stop += -(stop - start) % multiple
    if stop > size:
        start, stop = max(start - (stop - size), 0), size
    return slice(start, stop)

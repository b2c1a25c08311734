"""Test-time views: a crop classified as it is and as its in-plane mirror images and turns.

A model trained on few positives scores the same nodule differently when it is mirrored or
turned; averaging the views ranks nodules more steadily (docs/results.md), for ``views`` times
the compute.
"""
from __future__ import annotations

import torch
from torch import nn

# In-plane symmetries of a crop, as (transpose R and C, flip R, flip C). CT pixels are square, so
# each maps a plausible crop to another; the first n of this order make a group for n = 1, 2, 4, 8
# (identity; + the 180-degree turn; + the two mirror images; + the four transposed versions).
VIEWS = ((False, False, False), (False, True, True), (False, True, False), (False, False, True),
         (True, False, False), (True, True, True), (True, True, False), (True, False, True))
VIEW_COUNTS = (1, 2, 4, 8)
# luna predict's default: all eight (docs/results.md measures what they add).
DEFAULT_VIEW_COUNT = 8
# ...for the best 100 candidates of each scan by one view; the rest keep their one-view score
# (luna.infer.scoring.score_scan says why, docs/results.md measures it). 0 = every candidate.
DEFAULT_VIEWS_TOP = 100


def predict_views(model: nn.Module, x: torch.Tensor, views: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Classify crops averaged over in-plane symmetric views (test-time augmentation).

    Args:
        model: returns ``(logits, probabilities)`` like :class:`LunaModel`.
        x: (N, C, I, R, C) crops; R and C must be equal when ``views`` is 8.
        views: 1 (the crop as it is), 2, 4 or 8, see ``VIEWS``.

    Returns:
        (logits, probabilities), both (N, 2): the mean of the views' logits and its softmax.
    """
    if views not in VIEW_COUNTS:
        raise ValueError(f"views must be one of {VIEW_COUNTS}, got {views}")
    if views == 1:
        return model(x)
    if views == 8 and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"8 views transpose rows and columns, which needs square crops, got {tuple(x.shape)}")
    total = None
    for transpose, flip_r, flip_c in VIEWS[:views]:
        view = x.transpose(-1, -2) if transpose else x
        dims = [d for d, on in ((-2, flip_r), (-1, flip_c)) if on]
        logits = model(view.flip(dims) if dims else view)[0].float()
        total = logits if total is None else total + logits
    logits = total / views
    return logits, torch.softmax(logits, dim=1)

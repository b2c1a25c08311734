"""The state of every random generator a training run draws from, saved with a checkpoint.

``--resume`` continues a run exactly only when Python's, NumPy's and torch's generators pick up
where they stopped. Their states are stored in a form ``torch.load(weights_only=True)`` accepts:
tensors, numbers and strings, never a numpy array.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator training uses, in weights-only-loadable form.

    Returns:
        ``{"python": ..., "numpy": {...}, "torch": ByteTensor, "cuda": [ByteTensor, ...]}``.
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        # A numpy array is not on the weights-only allow list; a tensor is.
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back generator states taken by :func:`capture_rng_state`.

    Args:
        state: the ``rng_state`` entry of a checkpoint. CUDA states are restored only when the
            same number of GPUs is visible; otherwise CUDA keeps its current seed.
    """
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)

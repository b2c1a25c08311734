"""Nothing luna reads is trusted to run code: no pickle of files, weights-only checkpoints,
no network listeners; series uids never become paths."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from luna.runtime.checkpoint import load_checkpoint
from luna.errors import DataError

PACKAGE = Path(__file__).resolve().parents[1] / "luna"
SOURCES = {str(p.relative_to(PACKAGE)): p.read_text() for p in PACKAGE.rglob("*.py")}


def test_every_torch_load_is_weights_only():
    calls = [(name, m.group(0)) for name, text in SOURCES.items()
             for m in re.finditer(r"torch\.load\([^)]*\)", text)]
    assert calls, "expected the checkpoint module to load checkpoints"
    assert all("weights_only=True" in call for _, call in calls), calls


def test_no_pickle_loading_and_no_allow_pickle():
    for name, text in SOURCES.items():
        assert not re.search(r"pickle\.loads?\(|allow_pickle=True|dill|shelve", text), name


def test_nothing_listens_on_a_port():
    for name, text in SOURCES.items():
        assert not re.search(r"\bsocket\b|\.listen\(|http\.server|\.bind\(", text), name


def test_a_pickle_payload_in_a_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "luna-checkpoint", "format_version": 1, "x": Payload()}, path)
    with pytest.raises(DataError, match="evil.pt"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_cache_reads_refuse_object_arrays(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        np.load(path, mmap_mode="r", allow_pickle=False)  # what luna.cache does for every read

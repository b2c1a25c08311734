"""Checkpoints: atomic saves, weights-only loads, best tracking, one-line errors."""
from __future__ import annotations

import argparse
import io
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from luna.runtime import checkpoint
from luna.runtime.checkpoint import CheckpointSaver, jsonable_args, load_checkpoint, load_model_state, make_checkpoint, save_checkpoint
from luna.runtime.rng import capture_rng_state, restore_rng_state
from luna.errors import DataError, UsageError


def tiny_checkpoint(seed: int = 0, **extra) -> dict:
    torch.manual_seed(seed)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.99)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    fields = dict(model_name="tiny", model_config={"in": 4, "out": 2}, model_state=model.state_dict(),
                  optimizer_state=optimizer.state_dict(), epoch=3, samples_seen=300,
                  metric_name="pr/f1_score", metric_value=0.5, best_metric=0.5,
                  args=argparse.Namespace(epochs=3, data_dir=Path("/data/luna"), device="cpu"))
    fields.update(extra)
    return make_checkpoint(**fields)


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_round_trip_in_a_new_process(tmp_path):
    ckpt = tiny_checkpoint()
    path = tmp_path / "ck.pt"
    save_checkpoint(path, ckpt)
    expected = float(ckpt["model_state"]["weight"][1, 2])
    code = (
        "import sys; from luna.runtime.checkpoint import load_checkpoint\n"
        "c = load_checkpoint(sys.argv[1])\n"
        "print(repr(float(c['model_state']['weight'][1, 2])), c['epoch'], c['args']['data_dir'],"
        " c['format_version'], c['optimizer_state']['param_groups'][0]['momentum'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          timeout=60, check=True)
    weight, epoch, data_dir, version, momentum = done.stdout.split()
    assert float(weight) == expected
    assert (epoch, data_dir, version, float(momentum)) == ("3", "/data/luna", "1", 0.99)
    assert files_in(tmp_path) == ["ck.pt"]


def test_make_checkpoint_fills_format_and_makes_args_jsonable():
    ckpt = tiny_checkpoint()
    assert ckpt["format"] == "luna-checkpoint" and ckpt["format_version"] == 1
    assert ckpt["scheduler_state"] is None and ckpt["scaler_state"] is None
    assert ckpt["args"] == {"epochs": 3, "data_dir": "/data/luna", "device": "cpu"}
    assert set(ckpt["rng_state"]) == {"python", "numpy", "torch", "cuda"}
    with pytest.raises(ValueError):
        make_checkpoint(format="other")


def test_jsonable_args_converts_nested_values():
    args = argparse.Namespace(path=Path("a/b"), sizes=(1, 2), nested={"p": Path("x"), 3: {4}},
                              device=torch.device("cpu"), n=np.int64(7), ok=True, none=None)
    assert jsonable_args(args) == {"path": "a/b", "sizes": [1, 2], "nested": {"p": "x", "3": [4]},
                                   "device": "cpu", "n": 7, "ok": True, "none": None}


@pytest.mark.parametrize("offender", [argparse.Namespace(a=1), Path("x")])
def test_raw_namespace_or_path_is_refused_by_weights_only_load(tmp_path, offender):
    # Why jsonable_args exists: these objects make a checkpoint unloadable under weights_only.
    ckpt = tiny_checkpoint()
    ckpt["args"] = {"flags": offender}
    path = tmp_path / "bad.pt"
    save_checkpoint(path, ckpt)
    with pytest.raises(DataError, match=r"bad\.pt: refused: .*(argparse\.Namespace|pathlib\.PosixPath)"):
        load_checkpoint(path)


def test_rng_state_survives_a_checkpoint(tmp_path):
    ckpt = tiny_checkpoint(rng_state=capture_rng_state())
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    save_checkpoint(tmp_path / "ck.pt", ckpt)
    random.random(), np.random.rand(), torch.rand(1)  # move every generator on
    restore_rng_state(load_checkpoint(tmp_path / "ck.pt")["rng_state"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


class HalfWriteError(RuntimeError):
    pass


def half_writing_save(real_save):
    """A torch.save that dies half-way through the file, like a full disk or a killed process."""
    def save(obj, handle, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        raise HalfWriteError("disk full")
    return save


def test_interrupted_save_keeps_previous_files_and_leaves_no_temp(tmp_path, monkeypatch):
    saver = CheckpointSaver(tmp_path)
    assert saver.save(tiny_checkpoint(seed=1), 0.5) is True
    before_last = (tmp_path / "last.pt").read_bytes()
    before_best = (tmp_path / "best.pt").read_bytes()

    monkeypatch.setattr(checkpoint.torch, "save", half_writing_save(torch.save))
    with pytest.raises(HalfWriteError):
        saver.save(tiny_checkpoint(seed=2), 0.9)  # would have become best
    monkeypatch.undo()
    assert saver.best_metric == 0.5  # the failed save did not count

    assert files_in(tmp_path) == ["best.pt", "last.pt"]
    assert (tmp_path / "last.pt").read_bytes() == before_last
    assert (tmp_path / "best.pt").read_bytes() == before_best
    for name in ("last.pt", "best.pt"):
        loaded = load_checkpoint(tmp_path / name)
        assert loaded["metric_value"] == 0.5
        torch.testing.assert_close(loaded["model_state"]["weight"],
                                   tiny_checkpoint(seed=1)["model_state"]["weight"])


def test_missing_file_is_data_error(tmp_path):
    with pytest.raises(DataError, match=r"nope\.pt: no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_and_random_files_are_data_errors(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, tiny_checkpoint())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    text = tmp_path / "text.pt"
    text.write_bytes(b"hello world\n")
    for path in (truncated, noise, empty, text):
        with pytest.raises(DataError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert str(path) in message and "cannot be read" in message and "\n" not in message


@pytest.mark.parametrize("content", [{"model_state": {}}, torch.zeros(3),
                                     {"format": "luna-checkpoint"},
                                     {"format": "luna-checkpoint", "format_version": "1"}])
def test_plain_torch_file_is_not_a_luna_checkpoint(tmp_path, content):
    path = tmp_path / "plain.pt"
    torch.save(content, path)
    with pytest.raises(DataError, match=r"plain\.pt: not a luna checkpoint"):
        load_checkpoint(path)


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": "luna-checkpoint", "format_version": 2}, path)
    with pytest.raises(DataError, match="format_version 2 was written by a newer luna"):
        load_checkpoint(path)


class Bomb:
    """Unpickling this object would create a directory: code execution from a data file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_pickle_bomb_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "bomb.pt"
    torch.save({"format": "luna-checkpoint", "format_version": 1, "payload": Bomb(str(target))}, path)
    with pytest.raises(DataError, match=r"bomb\.pt: refused: .*\(posix\.mkdir\)$"):
        load_checkpoint(path)
    assert not target.exists()


def test_saver_tracks_max(tmp_path):
    saver = CheckpointSaver(tmp_path, metric_name="pr/f1_score", mode="max")
    results = [saver.save(tiny_checkpoint(epoch=e), v) for e, v in
               enumerate([0.2, 0.1, 0.4, 0.4, math.nan, 0.3], start=1)]
    assert results == [True, False, True, False, False, False]
    assert saver.best_metric == 0.4
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert (best["epoch"], best["metric_value"], best["best_metric"]) == (3, 0.4, 0.4)
    assert (last["epoch"], last["metric_value"], last["best_metric"]) == (6, 0.3, 0.4)
    assert best["metric_name"] == "pr/f1_score"


def test_saver_tracks_min_and_nan_first_writes_no_best(tmp_path):
    saver = CheckpointSaver(tmp_path, metric_name="loss/all", mode="min")
    assert saver.save(tiny_checkpoint(epoch=1), math.nan) is False
    assert files_in(tmp_path) == ["last.pt"]
    assert [saver.save(tiny_checkpoint(epoch=e), v) for e, v in [(2, 0.9), (3, 1.2), (4, 0.7)]] \
        == [True, False, True]
    assert saver.best_metric == 0.7
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 4


def test_resume_restores_best(tmp_path):
    first = CheckpointSaver(tmp_path)
    first.save(tiny_checkpoint(epoch=1), 0.6)
    first.save(tiny_checkpoint(epoch=2), 0.3)
    resumed = CheckpointSaver(tmp_path)
    assert resumed.best_metric == 0.6
    assert resumed.save(tiny_checkpoint(epoch=3), 0.5) is False
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert resumed.save(tiny_checkpoint(epoch=4), 0.65) is True
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 4


def test_resume_with_another_metric_starts_a_new_best(tmp_path):
    CheckpointSaver(tmp_path, metric_name="loss/all", mode="min").save(tiny_checkpoint(), 0.1)
    assert CheckpointSaver(tmp_path, metric_name="pr/f1_score").best_metric == -math.inf


def test_resume_with_corrupt_best_is_data_error(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="best.pt"):
        CheckpointSaver(tmp_path)


def test_bad_mode_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="'largest'"):
        CheckpointSaver(tmp_path, mode="largest")


def test_load_model_state_round_trip_and_ddp_prefix(tmp_path):
    ckpt = tiny_checkpoint(seed=5)
    ckpt["model_state"] = {f"module.{k}": v for k, v in ckpt["model_state"].items()}
    save_checkpoint(tmp_path / "ck.pt", ckpt)
    model = nn.Linear(4, 2)
    load_model_state(model, load_checkpoint(tmp_path / "ck.pt"), tmp_path / "ck.pt", expected_name="tiny")
    torch.testing.assert_close(model.weight.detach(), tiny_checkpoint(seed=5)["model_state"]["weight"])


def test_load_model_state_wrong_name(tmp_path):
    with pytest.raises(DataError, match=r"ck\.pt holds model 'tiny', expected 'luna'"):
        load_model_state(nn.Linear(4, 2), tiny_checkpoint(), tmp_path / "ck.pt", expected_name="luna")


def test_load_model_state_shape_mismatch_and_missing_keys(tmp_path):
    ckpt = tiny_checkpoint()
    with pytest.raises(DataError) as info:
        load_model_state(nn.Linear(5, 2), ckpt, tmp_path / "ck.pt")
    message = str(info.value)
    assert "ck.pt does not fit the model" in message and "weight (2, 4) vs (2, 5)" in message
    assert "\n" not in message
    with pytest.raises(DataError, match="missing keys 1.weight, 1.bias"):
        load_model_state(nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2)),
                         dict(ckpt, model_state={f"0.{k}": v for k, v in ckpt["model_state"].items()}),
                         tmp_path / "ck.pt")

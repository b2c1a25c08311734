"""Saving and loading training checkpoints, safely.

A checkpoint is one ``torch.save`` file holding a plain dict::

    {
        "format": "luna-checkpoint",      # marks the file as ours
        "format_version": 1,              # bumped when the layout changes incompatibly
        "luna_version": str,              # the package version that wrote it
        "model_name": str,                # e.g. "luna"; checked before weights are loaded
        "model_config": dict,             # what the model constructor needs to rebuild it
        "model_state": dict,              # model.state_dict() of the unwrapped model
        "optimizer_state": dict | None,
        "scheduler_state": dict | None,
        "scaler_state": dict | None,      # torch.amp.GradScaler state
        "epoch": int,                     # last completed epoch
        "samples_seen": int,              # training samples seen so far (TensorBoard x axis)
        "metric_name": str,               # e.g. "pr/f1_score"
        "metric_value": float,            # that metric after `epoch`
        "best_metric": float,             # best value of the metric so far, this one included
        "args": dict,                     # training flags, JSON-able (see jsonable_args)
        "data": dict,                     # scans and candidates per side: train_scans, val_candidates ...
        "val_metrics": dict,              # the epoch's validation figures (floats), as in summary.csv
        "rng_state": dict,                # see capture_rng_state
    }

Every load uses ``torch.load(..., weights_only=True)``: a checkpoint is data, and a file from
somewhere else must never be able to run code. So everything stored must be made of tensors,
numbers, strings, None and lists/tuples/dicts of them; :func:`jsonable_args` and
:func:`luna.runtime.rng.capture_rng_state` turn the usual offenders (config dataclasses, Paths, numpy arrays)
into such values.

Writes are atomic (temp file in the same directory, fsync, rename), so a crash or a full disk
half-way through a save never destroys the previous ``last.pt`` or ``best.pt``.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from luna.atomic import atomic_open
from luna.errors import DataError, UsageError
from luna.luna16.paths import BEST_NAME, LAST_NAME
from luna.models.registry import build_model
from luna.runtime.rng import capture_rng_state

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "luna-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

# Prefixes that wrappers put in front of every parameter name: DistributedDataParallel and
# DataParallel add "module.", torch.compile adds "_orig_mod.".
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _luna_version() -> str:
    try:
        return importlib.metadata.version("luna")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree, not installed
        return "unknown"


# --- making the dict -------------------------------------------------------------------------

def jsonable_args(args: Any) -> dict[str, Any]:
    """Turn a run's settings into a dict that both ``json.dumps`` and a weights-only load accept.

    Args:
        args: a config dataclass, a dict of settings, or any object with attributes (vars()).

    Returns:
        A new dict: Paths, devices, enums and other unknown objects become strings, tuples and
        sets become lists, nested dicts are converted too.
    """
    if dataclasses.is_dataclass(args) and not isinstance(args, type):
        items = {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}
    elif isinstance(args, dict):
        items = dict(args)
    else:
        items = vars(args)
    return {str(key): _jsonable(value) for key, value in items.items()}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    # Path, torch.device, ...: their string form is what a user typed and what a reader wants.
    return str(value)


def make_checkpoint(**fields: Any) -> dict[str, Any]:
    """Build a checkpoint dict with the format keys filled in.

    Args:
        **fields: the entries of the layout in the module docstring. ``args`` may be a
            config dataclass or dict (it is passed through :func:`jsonable_args`); missing optional states
            default to None and a missing ``rng_state`` is captured now.

    Returns:
        The checkpoint dict, ready for :func:`save_checkpoint` or :meth:`CheckpointSaver.save`.
    """
    for key in ("format", "format_version", "luna_version"):
        if key in fields:
            raise ValueError(f"make_checkpoint fills {key!r} itself")
    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "luna_version": _luna_version(),
        "optimizer_state": None,
        "scheduler_state": None,
        "scaler_state": None,
    }
    ckpt.update(fields)
    if "args" in ckpt:
        ckpt["args"] = jsonable_args(ckpt["args"])
    if "rng_state" not in ckpt:
        ckpt["rng_state"] = capture_rng_state()
    return ckpt


# --- atomic writes ---------------------------------------------------------------------------

def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` to ``path`` atomically; the previous file survives any failure.

    Args:
        path: destination file; its directory must exist.
        state: a checkpoint dict (see :func:`make_checkpoint`).
    """
    with atomic_open(path, durable=True) as handle:
        torch.save(state, handle)
    log.debug("Saved checkpoint %s", path)


def _copy_atomic(src: Path, dst: Path) -> None:
    with open(src, "rb") as source, atomic_open(dst, durable=True) as handle:
        shutil.copyfileobj(source, handle)


# --- loading ---------------------------------------------------------------------------------

def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a luna checkpoint without ever executing code from the file.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (``torch.load``'s argument).

    Returns:
        The checkpoint dict.

    Raises:
        DataError: the file is missing, unreadable, truncated or corrupted, holds objects a
            weights-only load refuses, or is not a luna checkpoint of a version this code reads.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        # torch.load raises RuntimeError, EOFError, UnpicklingError, ValueError... depending on
        # how the bytes are broken; all mean the same thing to the user.
        raise DataError(f"checkpoint {path}: {_describe_load_error(exc)}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"checkpoint {path}: not a luna checkpoint (no format '{CHECKPOINT_FORMAT}')")
    version = ckpt.get("format_version")
    if not isinstance(version, int):
        raise DataError(f"checkpoint {path}: not a luna checkpoint (no integer format_version)")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise DataError(f"checkpoint {path}: format_version {version} was written by a newer luna "
                        f"(this one reads up to {CHECKPOINT_FORMAT_VERSION})")
    return ckpt


def _describe_load_error(exc: BaseException) -> str:
    """Boil torch.load's multi-paragraph errors down to the part that helps a user."""
    text = str(exc)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        # torch's own text suggests weights_only=False, which is exactly what we must not do.
        return (f"refused: it holds a Python object that a safe (weights-only) load does not allow "
                f"({refused.group(1)})")
    if isinstance(exc, EOFError):
        return "cannot be read: the file ends early (truncated?)"
    if "Weights only load failed" in text:
        return "cannot be read: corrupted, or not a file written by torch.save"
    first = text.strip().split(". ")[0].splitlines()[0] if text.strip() else ""
    if " " not in first:  # a bare KeyError('101') says nothing without its type
        first = f"{type(exc).__name__} {first}".strip()
    return f"cannot be read: corrupted or truncated ({first})"


def _strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def load_model_state(model: nn.Module, ckpt: dict[str, Any], path: Path,
                     expected_name: str | None = None) -> None:
    """Load a checkpoint's weights into ``model``, with one-line errors for the usual mistakes.

    Args:
        model: the model to fill; a DistributedDataParallel/DataParallel wrapper is looked through.
        ckpt: a dict from :func:`load_checkpoint`.
        path: the checkpoint's file name, for messages.
        expected_name: when given, the ``model_name`` the checkpoint must hold.

    Raises:
        DataError: the checkpoint holds another model, or its weights do not fit this one.
    """
    found_name = ckpt.get("model_name")
    if expected_name is not None and found_name != expected_name:
        raise DataError(f"checkpoint {path} holds model {found_name!r}, expected {expected_name!r}")
    state = ckpt.get("model_state")
    if not isinstance(state, dict):
        raise DataError(f"checkpoint {path}: no model_state")
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    state = _strip_wrapper_prefixes(state)
    problem = _describe_mismatch(model.state_dict(), state)
    if problem:
        raise DataError(f"checkpoint {path} does not fit the model: {problem}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # anything _describe_mismatch did not foresee
        raise DataError(f"checkpoint {path} does not fit the model: "
                        f"{' '.join(str(exc).split())}") from exc


def _describe_mismatch(expected: dict[str, Any], found: dict[str, Any], limit: int = 3) -> str:
    """A short summary of missing keys, unexpected keys and shape differences ('' when none)."""
    def names(keys: list[str]) -> str:
        more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in found and hasattr(found[k], "shape") and hasattr(v, "shape")
              and tuple(found[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"missing keys {names(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {names(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch {names(shapes)} (checkpoint vs model)")
    return "; ".join(parts)


# --- last / best bookkeeping -----------------------------------------------------------------

class CheckpointSaver:
    """Keeps ``run_dir/last.pt`` (every save) and ``run_dir/best.pt`` (when the metric improves).

    Args:
        run_dir: directory for the two files; created if missing.
        metric_name: the metric that decides "best", stored in each checkpoint.
        mode: "max" when bigger is better, "min" when smaller is better.

    On construction an existing ``best.pt`` (a resumed run) sets :attr:`best_metric`, so a
    resumed run only replaces it with something better.
    """

    def __init__(self, run_dir: Path, metric_name: str = "pr/f1_score",
                 mode: Literal["max", "min"] = "max") -> None:
        if mode not in ("max", "min"):
            raise UsageError(f"checkpoint metric mode must be 'max' or 'min', got {mode!r}")
        self.run_dir = Path(run_dir)
        self.metric_name = metric_name
        self.mode = mode
        self.last_path = self.run_dir / LAST_NAME
        self.best_path = self.run_dir / BEST_NAME
        self.best_metric = -math.inf if mode == "max" else math.inf
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.best_path.exists():
            self._restore_best()

    def _restore_best(self) -> None:
        ckpt = load_checkpoint(self.best_path)
        if ckpt.get("metric_name") != self.metric_name:
            # Values of another metric are not comparable; the next save starts a new best.
            log.warning("%s ranks by %r, this run by %r: its best is not carried over",
                        self.best_path, ckpt.get("metric_name"), self.metric_name)
            return
        value = float(ckpt.get("metric_value", math.nan))
        if not math.isnan(value):
            self.best_metric = value
            if self.metric_name == "epoch":  # an epoch number, not a score
                log.info("Resuming: %s holds epoch %d", self.best_path, value)
            else:
                log.info("Resuming with best %s = %.4f from %s", self.metric_name, value, self.best_path)

    def is_improvement(self, metric_value: float) -> bool:
        """Whether ``metric_value`` beats the best so far (NaN never does, ties do not)."""
        if math.isnan(metric_value):
            return False
        if self.mode == "max":
            return metric_value > self.best_metric
        return metric_value < self.best_metric

    def save(self, state: dict[str, Any], metric_value: float) -> bool:
        """Write ``last.pt``, and ``best.pt`` too when ``metric_value`` is a new best.

        Args:
            state: a checkpoint dict; ``metric_name``, ``metric_value`` and ``best_metric`` are
                set by the saver (on a copy) so they always agree with the files.
            metric_value: this checkpoint's value of the metric.

        Returns:
            True when this checkpoint became ``best.pt``.
        """
        metric_value = float(metric_value)
        is_best = self.is_improvement(metric_value)
        best = metric_value if is_best else self.best_metric
        state = dict(state, metric_name=self.metric_name, metric_value=metric_value, best_metric=best)
        save_checkpoint(self.last_path, state)
        if is_best:
            # Copy last.pt's bytes: best.pt is then the same checkpoint, without serialising it twice.
            _copy_atomic(self.last_path, self.best_path)
            # Only now: a failed write must not raise the bar that the next save has to beat.
            self.best_metric = best
            log.info("New best %s = %.4g: saved %s", self.metric_name, metric_value, self.best_path)
        return is_best


# --- finding and rebuilding a model ----------------------------------------------------------

def resolve_checkpoint_path(path: Path) -> Path:
    """A checkpoint file as given, or a run directory's best.pt (its last.pt if it has no best).

    Raises:
        DataError: nothing there, or a directory without either file.
    """
    path = Path(path)
    if not path.is_dir():
        return path  # load_checkpoint reports a missing file
    for name in (BEST_NAME, LAST_NAME):
        if (path / name).is_file():
            if name != BEST_NAME:
                log.warning("Run directory %s has no %s; using %s", path, BEST_NAME, name)
            return path / name
    raise DataError(f"checkpoint {path}: a directory without {BEST_NAME} or {LAST_NAME}")


def load_model(ckpt_path: Path, ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild a checkpoint's network with its weights, on the CPU.

    Raises:
        DataError: no usable model config, or weights that do not fit it.
    """
    config = ckpt.get("model_config")
    if not isinstance(config, dict):
        raise DataError(f"checkpoint {ckpt_path}: no model_config to rebuild the model from")
    model = build_model(config)
    load_model_state(model, ckpt, ckpt_path, expected_name=getattr(model, "name", None))
    return model

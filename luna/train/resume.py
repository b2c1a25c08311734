"""What ``luna train --resume RUN`` may change: a resume continues *the run*.

The run's own settings come from its ``last.pt`` (the ``args`` every checkpoint holds); a user
may change only what leaves the data, the split and the model as they were:

- ``--epochs``, to train on past the epochs asked for before (a cosine schedule then stretches
  to the new end);
- where things are and how fast they run: ``--data-dir`` and ``--cache-dir`` (the data moved),
  ``--num-workers``, ``--device``, ``--precision``, ``--channels-last``, ``--compile``;
- ``--lr``, a new peak learning rate from here on;
- ``--candidates``, ``--annotations``, ``--excluded``, only when the run's file is gone (moved).

Anything else (``--val-stride``, ``--split``, ``--model``, ``--balanced``, ``--seed``,
``--crop-edge`` ...) would make the resumed epochs another experiment, or put validation scans
into training: it is refused in one line naming the flag and the run's value.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from luna.errors import DataError, UsageError
from luna.luna16.paths import LAST_NAME, RUN_META_NAME
from luna.runtime.checkpoint import load_checkpoint
from luna.train.config import TrainConfig

# Fields of TrainConfig a resume may set to a new value.
CHANGEABLE = frozenset({"resume", "epochs", "data_dir", "cache_dir", "num_workers", "device", "precision",
                        "channels_last", "compile", "lr"})
# Input files that may point to a new place, when the run's own file is not there any more.
MOVABLE = frozenset({"candidates", "annotations", "excluded"})
# Flags whose name is not the field's; switches written --x / --no-x; switches written --x or not at all.
FLAG_NAMES = {"augmented": "augment"}
SWITCHES = frozenset({"skip_excluded", "augmented", "augment_flip", "augment_rotate"})
ON_SWITCHES = frozenset({"tb_single_writer"})


def load_run_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The ``last.pt`` of a run directory, with one-line errors for what is not a resumable run.

    Raises:
        DataError: no run.json (not a luna run), or no last.pt (no epoch finished).
    """
    run_dir = Path(run_dir)
    if not (run_dir / RUN_META_NAME).is_file():
        raise DataError(f"--resume {run_dir}: not a luna run directory (no {RUN_META_NAME})")
    if not (run_dir / LAST_NAME).is_file():
        raise DataError(f"--resume {run_dir}: no {LAST_NAME}, the run did not finish an epoch; start it again")
    return load_checkpoint(run_dir / LAST_NAME)


def run_config(ckpt: dict[str, Any]) -> TrainConfig:
    """The settings a run was trained with, from its checkpoint."""
    return TrainConfig.from_dict(ckpt.get("args") or {})


def resumed_config(run_dir: Path, changes: dict[str, Any]) -> TrainConfig:
    """The run's own settings with the flags the user typed on top (checked by :func:`check_resume`).

    Args:
        run_dir: the run to continue.
        changes: field name -> value, for the flags given on the command line only.
    """
    values = dataclasses.asdict(run_config(load_run_checkpoint(run_dir)))
    values.update(changes, resume=Path(run_dir))
    return TrainConfig(**values)


def check_resume(config: TrainConfig, ckpt: dict[str, Any], run_dir: Path) -> None:
    """Refuse a resume that would change what the run is, or that has no epoch left to train.

    Raises:
        UsageError: naming the first flag that differs from the run's value, or ``--epochs``.
    """
    if ckpt.get("args"):
        run = run_config(ckpt)
        for f in dataclasses.fields(TrainConfig):
            name = f.name
            old, new = getattr(run, name), getattr(config, name)
            if name in CHANGEABLE or old == new or (name in MOVABLE and _moved(old, new)):
                continue
            raise UsageError(f"--resume {run_dir}: the run was trained with {_flag(name, old)}, not "
                             f"{_flag(name, new)}; a resume continues the run as it was "
                             "(start a new run to change it)")
    done = int(ckpt["epoch"])
    if config.epochs <= done:
        raise UsageError(f"--resume {run_dir}: the run has trained {done} epochs already (--epochs "
                         f"{config.epochs}); pass --epochs {done + 1} or more to train on")


def _moved(old: Any, new: Any) -> bool:
    """A new place for an input file, accepted only when the run's file is gone."""
    return old is not None and new is not None and not Path(old).exists()


def _flag(name: str, value: Any) -> str:
    """How a user writes ``name = value`` on the command line."""
    flag = "--" + FLAG_NAMES.get(name, name).replace("_", "-")
    if name == "comment":
        return f"the comment {value!r}"
    if name in SWITCHES:
        return flag if value else flag.replace("--", "--no-", 1)
    if value is None or (name in ON_SWITCHES and not value):
        return f"no {flag}"
    if name in ON_SWITCHES:
        return flag
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"

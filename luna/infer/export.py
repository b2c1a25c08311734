"""``luna export``: a checkpoint's network as a file that runs without luna's training code (ONNX
or TorchScript), with its model card beside it.

The network is exported in float32 with a dynamic batch dimension, as it is: one view of a batch
of crops in, ``(logits, probabilities)`` out. Cropping, test-time views and suppression stay
outside the file; the card says how ``luna predict`` does them, and ``luna predict --checkpoint
model.onnx`` does them the same way as for the checkpoint. Before anything is written, the
exported bytes are run on a batch and compared with the checkpoint's network.
"""
from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from luna.atomic import atomic_open
from luna.data.crops import CropConfig
from luna.errors import DataError, UsageError
from luna.infer.exported import (JIT_DEPRECATION, ONNX_INSTALL_HINT, exported_format, onnx_classifier,
                                 torchscript_classifier)
from luna.infer.modelcard import EXPORT_FORMATS, INPUT_NAME, OUTPUT_NAMES, build_card, card_path, write_card
from luna.infer.predict import crop_of_checkpoint
from luna.models.registry import count_parameters
from luna.runtime.checkpoint import load_checkpoint, load_model, resolve_checkpoint_path
from luna.runtime.rundir import read_summary

log = logging.getLogger(__name__)

DEFAULT_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
CHECK_BATCH = 4  # crops in the batch that checks the exported file against the checkpoint
MAX_DIFFERENCE = 1e-3  # the largest probability difference an export may show on that batch


@dataclass
class ExportConfig:
    """What ``luna export`` is told (see its ``--help``)."""

    checkpoint: Path
    format: str = "onnx"
    out: Path | None = None


def check_batch(crop: CropConfig, n: int = CHECK_BATCH) -> torch.Tensor:
    """``n`` fixed crops of HU across the window (the same for every export)."""
    generator = torch.Generator().manual_seed(0)
    uniform = torch.rand((n, 1, *crop.shape_irc), generator=generator)
    return crop.hu_min + uniform * (crop.hu_max - crop.hu_min)


def onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model as ONNX (torch's exporter, opset of its choosing), batch dimension dynamic."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs both; say so before it fails deep inside)
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError(f"exporting to ONNX needs onnx and onnxscript: {ONNX_INSTALL_HINT}") from None
    # The exporter reports its steps on stdout and warns about optional packages (torchvision);
    # luna's own log says what happened.
    with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "torch.export", "onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                    external_data=False, verbose=False)
    return program.model_proto.SerializeToString()


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model traced to TorchScript (its forward has no data-dependent branches)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION)
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


class _quiet_loggers:
    """Raise some libraries' loggers to ERROR for the duration of a block."""

    def __init__(self, *names: str):
        self.loggers = [logging.getLogger(name) for name in names]

    def __enter__(self) -> None:
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: Any) -> None:
        for logger, level in zip(self.loggers, self.levels):
            logger.setLevel(level)


def difference_on(model_bytes: bytes, model_format: str, model: nn.Module, example: torch.Tensor,
                  name: str) -> float:
    """Largest absolute difference between the exported model's probabilities and ``model``'s."""
    cpu = torch.device("cpu")
    exported = onnx_classifier(model_bytes, cpu, name) if model_format == "onnx" else \
        torchscript_classifier(model_bytes, cpu, name)
    with torch.inference_mode():
        expected = model(example)[1].numpy()
        got = exported(example)[1].numpy()
    return float(np.abs(got - expected).max())


def validation_of(ckpt_path: Path, ckpt: dict[str, Any]) -> dict[str, float] | None:
    """The validation figures of the checkpoint's epoch: from the checkpoint, or (runs from before it
    kept them) from the ``summary.csv`` beside it."""
    if isinstance(ckpt.get("val_metrics"), dict):
        return ckpt["val_metrics"]
    rows = [row for row in read_summary(ckpt_path.parent) if row.get("epoch") == str(ckpt.get("epoch"))]
    if not rows:
        return None
    return {key[4:]: float(value) for key, value in rows[-1].items() if key.startswith("val_") and value != ""}


def default_out(ckpt_path: Path, model_format: str) -> Path:
    return ckpt_path.parent / DEFAULT_NAMES[model_format]


def export_model(config: ExportConfig) -> Path:
    """Export a checkpoint's network and write its card; return the model file's path.

    Raises:
        DataError: not a luna checkpoint, or an export that does not reproduce it.
        UsageError: an unknown format, a bad ``--out``, or the ONNX packages missing.
    """
    if config.format not in EXPORT_FORMATS:
        raise UsageError(f"--format {config.format}: expected one of {', '.join(EXPORT_FORMATS)}")
    ckpt_path = resolve_checkpoint_path(config.checkpoint)
    already = exported_format(ckpt_path) if ckpt_path.is_file() else None
    if already:
        raise DataError(f"checkpoint {ckpt_path}: an exported {already} model, not a luna checkpoint; export the "
                        "checkpoint it came from (its card names it)")
    ckpt = load_checkpoint(ckpt_path)
    out = Path(config.out or default_out(ckpt_path, config.format))
    check_out(out, config.format, ckpt_path)
    model = load_model(ckpt_path, ckpt).float().eval()
    crop = crop_of_checkpoint(ckpt_path, ckpt)
    example = check_batch(crop)
    model_bytes = onnx_bytes(model, example) if config.format == "onnx" else torchscript_bytes(model, example)
    difference = difference_on(model_bytes, config.format, model, example, str(out))
    if not difference <= MAX_DIFFERENCE:
        raise DataError(f"{ckpt_path}: the {config.format} export differs from the checkpoint by {difference:.3g} "
                        f"in probability on a check batch (more than {MAX_DIFFERENCE:g}); nothing written")
    card = build_card(model_format=config.format, model_path=out, model_bytes=model_bytes, ckpt_path=ckpt_path,
                      ckpt=ckpt, crop=crop, n_parameters=count_parameters(model),
                      max_abs_difference=difference, check_batch=len(example),
                      validation=validation_of(ckpt_path, ckpt))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, durable=True) as handle:
        handle.write(model_bytes)
    write_card(card, out)
    log.info("Exported %s epoch %s to %s (%s, %.1f MB; probabilities within %.2g of the checkpoint's) and its "
             "card %s", ckpt_path, ckpt.get("epoch", "?"), out, config.format, len(model_bytes) / 1e6, difference,
             card_path(out))
    return out


def check_out(out: Path, model_format: str, ckpt_path: Path) -> None:
    """``--out`` must be a file name ``luna predict`` will recognise, and not the checkpoint itself.

    Raises:
        UsageError: a directory, the checkpoint's own path, or a name that says another format.
    """
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as {out / DEFAULT_NAMES[model_format]}")
    if out.exists() and out.resolve() == ckpt_path.resolve():
        raise UsageError(f"--out {out} is the checkpoint being exported; give another file name")
    is_onnx_name = out.suffix.lower() == ".onnx"
    if (model_format == "onnx") != is_onnx_name or out.suffix.lower() == ".json":
        want = "end in .onnx" if model_format == "onnx" else "not end in .onnx or .json (e.g. model.torchscript.pt)"
        raise UsageError(f"--out {out}: a {model_format} model's file name must {want}; luna predict knows "
                         "the format by it")

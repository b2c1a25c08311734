"""Running an exported model (ONNX through onnxruntime, or TorchScript) where a checkpoint's network
would run: ``(N, 1, I, R, C)`` float32 crops in, ``(logits, probabilities)`` out.

An exported file is only used with its model card (:mod:`luna.infer.modelcard`): the card says
which crops the model takes, and a file that does not match its card is refused before it runs.
"""
from __future__ import annotations

import io
import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from luna.data.crops import CropConfig
from luna.errors import DataError, UsageError
from luna.infer.modelcard import INPUT_NAME, OUTPUT_NAMES, card_path, crop_of_card, read_card
from luna.runtime.device import resolve_device

log = logging.getLogger(__name__)

ONNX_INSTALL_HINT = "pip install 'luna[onnx]' (or pip install onnxruntime onnx onnxscript)"
# torch 2.13 marks TorchScript deprecated and warns on every trace, save and load; the format still
# works and is what the card names, so the warning would only be noise in luna's output.
JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


def exported_format(path: Path) -> str | None:
    """``"onnx"`` for a ``.onnx`` file, ``"torchscript"`` for a TorchScript archive, None for
    anything else (a luna checkpoint, or something ``load_checkpoint`` will refuse)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    try:
        with zipfile.ZipFile(path) as archive:
            # torch.save archives hold data.pkl and data/; only TorchScript ones hold code.
            is_script = any("/code/__torch__/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return None
    return "torchscript" if is_script else None


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(f"running an ONNX model needs onnxruntime: {ONNX_INSTALL_HINT}") from None
    return onnxruntime


class OnnxClassifier(nn.Module):
    """An onnxruntime session behind the interface of luna's classifiers, so that test-time views
    and batching run exactly as for a checkpoint. Inputs cross to numpy on the CPU."""

    def __init__(self, session: Any):
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        crops = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        logits, probabilities = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: crops})
        return torch.from_numpy(logits), torch.from_numpy(probabilities)


def onnx_classifier(source: bytes | Path, device: torch.device, name: str) -> OnnxClassifier:
    """An ONNX model (a file, or its bytes) in onnxruntime: on the GPU when ``device`` is one and
    onnxruntime-gpu is installed, else on the CPU."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same share of the machine as torch
    options.log_severity_level = 3  # errors only
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            log.warning("onnxruntime has no CUDA provider here (pip install onnxruntime-gpu): running on the CPU")
    try:
        session = ort.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                       providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise DataError(f"{name}: onnxruntime cannot load it ({_first_line(exc)})") from None
    return OnnxClassifier(session)


def torchscript_classifier(source: bytes | Path, device: torch.device, name: str) -> nn.Module:
    """A TorchScript model (a file, or its bytes) on ``device``, in eval mode."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=JIT_DEPRECATION)
            module = torch.jit.load(io.BytesIO(source) if isinstance(source, bytes) else str(source),
                                    map_location=device)
    except Exception as exc:  # torch.jit raises RuntimeError and friends for a bad archive
        raise DataError(f"{name}: not a loadable TorchScript model ({_first_line(exc)})") from None
    return module.eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class ExportedModel:
    """An exported model ready to score: the network, its card, its crops and where inputs go."""

    model: nn.Module
    card: dict[str, Any]
    crop: CropConfig
    input_device: torch.device


def load_exported(path: Path, model_format: str, device_arg: str = "auto") -> ExportedModel:
    """An exported model and its card, checked against each other.

    Raises:
        DataError: the card is missing or does not match the file (see
            :func:`~luna.infer.modelcard.read_card`), or the model does not take the card's crops.
        UsageError: onnxruntime is not installed (ONNX).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    card = read_card(path, model_format)
    crop = crop_of_card(card, card_path(path))
    device = resolve_device(device_arg)
    if model_format == "onnx":
        model: nn.Module = onnx_classifier(path, device, str(path))
        declared = list(model.session.get_inputs()[0].shape)
        if declared[1:] != [1, *crop.shape_irc]:
            raise DataError(f"{path} takes input {declared}, its card {card_path(path).name} says "
                            f"{card['input']['shape']}: the card is another model's")
        input_device = torch.device("cpu")
    else:
        model = torchscript_classifier(path, device, str(path))
        input_device = device
    check_takes(model, crop, input_device, path)
    return ExportedModel(model, card, crop, input_device)


def check_takes(model: nn.Module, crop: CropConfig, device: torch.device, path: Path) -> None:
    """One crop of the card's shape through the model: it must give one pair of scores.

    Raises:
        DataError: it fails, or gives other shapes (the card describes another model).
    """
    x = torch.full((1, 1, *crop.shape_irc), float(crop.hu_min), device=device)
    try:
        with torch.inference_mode():
            logits, probabilities = model(x)
    except Exception as exc:
        raise DataError(f"{path} does not take the crops its card {card_path(path).name} describes "
                        f"({list(x.shape)}): {_first_line(exc)}") from None
    if tuple(logits.shape) != (1, 2) or tuple(probabilities.shape) != (1, 2):
        raise DataError(f"{path} gives outputs {tuple(logits.shape)} and {tuple(probabilities.shape)} for one "
                        f"crop, expected (1, 2) each: the card {card_path(path).name} is another model's")

"""The model card: the JSON file beside an exported model that says what the model expects and
where it came from, so that it can be used without luna's training code.

``luna export`` writes it as ``<model file>.json`` (``model.onnx`` -> ``model.onnx.json``); ``luna
predict`` reads it back to cut the crops the model was trained on and refuses a model file that
does not match it (its SHA-256 or its input shape). Layout, as :func:`build_card` fills it::

    format, card_version, luna_version, intended_use
    model_file   name, format (onnx | torchscript), sha256, bytes
    model        name, config, parameters, epoch, exported_from
    input        name, shape [N, 1, I, R, C], dtype, axis_order, axes, units, hu_window
    crop         shape_irc, centre, edge, edge_rule, voxel_mm, spacing
    output       names, shape, probability_column, meaning
    prediction   tta_views, views, how_views_combine, nms_mm, suppressed_scale, suppression
    training     data_dir, data (scan and candidate counts), args (every training flag)
    metrics      epoch, metric_name, metric_value, validation (the epoch's validation figures)
    export_check batch, max_abs_difference (exported vs checkpoint probabilities)
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from luna.atomic import write_text_atomic
from luna.data.crops import CropConfig
from luna.errors import DataError
from luna.eval.suppression import NMS_RADIUS_MM, SUPPRESSED_SCALE
from luna.models.views import DEFAULT_VIEWS_TOP, VIEWS

CARD_FORMAT = "luna-model-card"
CARD_VERSION = 1
EXPORT_FORMATS = ("onnx", "torchscript")
INPUT_NAME = "crops"
OUTPUT_NAMES = ("logits", "probabilities")
BATCH_AXIS = "N"  # the input's first dimension: any batch size
DEFAULT_TTA_VIEWS = 8  # what `luna predict` averages by default

INTENDED_USE = ("Research and teaching: ranking the candidate locations of chest CT scans in the LUNA16 "
                "format by how likely each is a lung nodule, to study and compare methods. Not a medical "
                "device: not for diagnosis, screening or any decision about a patient.")


def card_path(model_path: Path) -> Path:
    """Where the card of ``model_path`` lives: the same path with ``.json`` added."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _number(value: Any) -> Any:
    """JSON has no nan: undefined figures become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _crop_section(crop: CropConfig) -> dict[str, Any]:
    edge_rules = {
        "pad": "a crop that would leave the volume stays centred on the candidate; voxels outside are "
               f"{crop.hu_min} HU (air)",
        "shift": "a crop that would leave the volume is moved inside it (then off-centre)",
    }
    return {
        "shape_irc": list(crop.shape_irc),
        "centre": "the candidate's voxel: its world position (x, y, z mm) mapped through the scan's origin, "
                  "spacing and direction matrix to (I, R, C) and rounded; crop index shape // 2 on each axis",
        "edge": crop.edge,
        "edge_rule": edge_rules[crop.edge],
        "voxel_mm": crop.voxel_mm,
        "spacing": f"the scan is first resampled to isotropic {crop.voxel_mm:g} mm voxels (trilinear, rounded to "
                   "whole HU)" if crop.voxel_mm else "the scan's own voxels, not resampled (as the reference)",
    }


def _prediction_section(tta_views: int, nms_mm: float) -> dict[str, Any]:
    return {
        "tta_views": tta_views,
        "views": [{"transpose_rc": t, "flip_r": r, "flip_c": c} for t, r, c in VIEWS[:tta_views]],
        "how_views_combine": "the model runs on each view of a crop; the mean of the views' logits goes "
                             "through a softmax (done outside the model file)",
        "views_for_best_per_scan": DEFAULT_VIEWS_TOP,
        "which_candidates_get_the_views": "every candidate is scored at one view; the views_for_best_per_scan "
                                          "best of each scan by that score get all tta_views, the others keep "
                                          "their one-view score (0: every candidate gets every view)",
        "nms_mm": nms_mm,
        "suppressed_scale": SUPPRESSED_SCALE,
        "suppression": "per scan, from the highest probability down, a candidate closer than nms_mm to a kept "
                       "higher-scoring one has its probability multiplied by suppressed_scale (0 mm: off)",
    }


def build_card(*, model_format: str, model_path: Path, model_bytes: bytes, ckpt_path: Path,
               ckpt: dict[str, Any], crop: CropConfig, n_parameters: int, max_abs_difference: float,
               check_batch: int, validation: dict[str, float] | None) -> dict[str, Any]:
    """The card of an exported model (see the module docstring for its sections).

    Args:
        model_format: one of :data:`EXPORT_FORMATS`.
        model_path, model_bytes: the exported file and its exact bytes.
        ckpt_path, ckpt: the checkpoint it came from (:func:`luna.runtime.checkpoint.load_checkpoint`).
        crop: the crops the model was trained on.
        n_parameters: the network's parameter count.
        max_abs_difference, check_batch: how far the exported model's probabilities were from the
            checkpoint's on a batch of ``check_batch`` crops.
        validation: the validation figures of the checkpoint's epoch, if known.
    """
    args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    return {
        "format": CARD_FORMAT,
        "card_version": CARD_VERSION,
        "luna_version": ckpt.get("luna_version", "unknown"),
        "intended_use": INTENDED_USE,
        "model_file": {"name": Path(model_path).name, "format": model_format, "sha256": sha256_of(model_bytes),
                       "bytes": len(model_bytes)},
        "model": {"name": ckpt.get("model_name"), "config": ckpt.get("model_config"), "parameters": n_parameters,
                  "epoch": ckpt.get("epoch"), "exported_from": str(ckpt_path)},
        "input": {
            "name": INPUT_NAME, "shape": [BATCH_AXIS, 1, *crop.shape_irc], "dtype": "float32",
            "axis_order": "N,1,I,R,C",
            "axes": {"N": "batch, any size", "1": "one channel: HU",
                     "I": "index: the scan's slices (head-foot, z)", "R": "row (y)", "C": "column (x)"},
            "units": "Hounsfield units, clipped to hu_window (no other scaling: the model normalises them)",
            "hu_window": [crop.hu_min, crop.hu_max],
        },
        "crop": _crop_section(crop),
        "output": {"names": list(OUTPUT_NAMES), "shape": [BATCH_AXIS, 2], "probability_column": 1,
                   "meaning": "column 1 is 'nodule'; probabilities = softmax(logits)"},
        "prediction": _prediction_section(DEFAULT_TTA_VIEWS, NMS_RADIUS_MM),
        "training": {"data_dir": args.get("data_dir"), "data": ckpt.get("data"), "args": args},
        "metrics": {"epoch": ckpt.get("epoch"), "metric_name": ckpt.get("metric_name"),
                    "metric_value": _number(ckpt.get("metric_value")),
                    "validation": {k: _number(v) for k, v in validation.items()} if validation else None},
        "export_check": {"batch": check_batch, "max_abs_difference": max_abs_difference,
                         "against": "the checkpoint's network in float32 on the CPU, probabilities"},
    }


def write_card(card: dict[str, Any], model_path: Path) -> Path:
    return write_text_atomic(card_path(model_path), json.dumps(card, indent=1, allow_nan=False) + "\n")


def read_card(model_path: Path, model_format: str) -> dict[str, Any]:
    """The card of an exported model, checked against the model file's bytes.

    Raises:
        DataError: no card, an unreadable one, one that is not luna's, or one that describes
            another file (format or SHA-256) or an input shape other than its crops'.
    """
    model_path, path = Path(model_path), card_path(model_path)
    if not path.is_file():
        raise DataError(f"{model_path}: no model card {path.name} beside it; export the model again with "
                        "luna export (the card says which crops it takes)")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable model card ({exc})") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise DataError(f"{path}: not a luna model card (no format '{CARD_FORMAT}')")
    if not isinstance(card.get("card_version"), int) or card["card_version"] > CARD_VERSION:
        raise DataError(f"{path}: card_version {card.get('card_version')!r} is not one this luna reads "
                        f"(up to {CARD_VERSION})")
    try:
        described, expected = card["model_file"]["format"], card["model_file"]["sha256"]
        crop_of_card(card, path)
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: incomplete model card (missing {exc})") from None
    if described != model_format:
        raise DataError(f"{path}: the card describes a {described} model, {model_path.name} is {model_format}")
    found = sha256_of(model_path.read_bytes())
    if found != expected:
        raise DataError(f"{model_path} does not match its card {path.name}: SHA-256 {found[:12]}... vs "
                        f"{str(expected)[:12]}... in the card (the file changed, or the card is another model's)")
    return card


def crop_of_card(card: dict[str, Any], path: Path) -> CropConfig:
    """The crops a card's model takes; its input shape must be those crops.

    Raises:
        DataError: a crop section luna cannot use, or an input shape that is not ``[N, 1, *shape_irc]``.
    """
    section = card["crop"]
    try:
        hu_min, hu_max = card["input"]["hu_window"]
        crop = CropConfig(shape_irc=tuple(int(n) for n in section["shape_irc"]), hu_min=int(hu_min),
                          hu_max=int(hu_max), edge=str(section["edge"]), voxel_mm=float(section["voxel_mm"]))
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    shape = card["input"]["shape"]
    if list(shape) != [BATCH_AXIS, 1, *crop.shape_irc]:
        raise DataError(f"{path}: input shape {shape} is not [{BATCH_AXIS}, 1, *crop shape_irc "
                        f"{list(crop.shape_irc)}]")
    return crop

"""Scoring the candidates of a data dir with a trained model into a LUNA16 results file.

The output (``seriesuid,coordX,coordY,coordZ,probability``) is what ``luna evaluate`` and the
official LUNA16 scripts read. Scans are read directly, one at a time, so they need not be in
the crop cache and nothing but the results file is written. On the training run's own data dir
the default split, ``val``, scores exactly the scans that the run held out (for validation, or
the test scans of its cross-validation fold); on any other data dir every scan is new, and every
scan is scored. The model is a checkpoint, or a file ``luna export`` wrote (ONNX, TorchScript),
which runs in float32 with the crops, views and suppression it would have as a checkpoint.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from luna.data.candidates import get_candidate_info_list
from luna.data.crops import CropConfig
from luna.errors import DataError, UsageError
from luna.eval.suppression import NMS_RADIUS_MM, suppress_neighbours
from luna.infer.exported import exported_format, load_exported
from luna.infer.findings import merge_rows
from luna.infer.scoring import ScanJob, iter_scan_scores
from luna.io.scans import find_series_files
from luna.luna16.candidates import CandidateInfo, split_candidates
from luna.luna16.csvfiles import PREDICTION_COLUMNS, prediction_rows, write_table
from luna.luna16.geometry import XyzTuple
from luna.luna16.paths import ANNOTATION_FILE_NAMES, default_data_dir, find_optional_csv, predictions_name
from luna.luna16.sample import CROP_SHAPE_IRC
from luna.models.views import DEFAULT_VIEW_COUNT, DEFAULT_VIEWS_TOP
from luna.progress import enumerate_with_estimate
from luna.runtime.checkpoint import load_checkpoint, load_model, resolve_checkpoint_path
from luna.runtime.device import StepConfig, prepare_model, resolve_device, resolve_performance
from luna.runtime.distributed import DistContext, barrier, cleanup_distributed, gather_objects, init_distributed

log = logging.getLogger(__name__)

SPLIT_CHOICES = ("val", "train", "all")
# What training assumed when a checkpoint does not record its split flags.
DEFAULT_VAL_STRIDE = 10
DEFAULT_SPLIT_MODE = "scan"


@dataclass
class PredictConfig:
    """What ``luna predict`` is told (see its ``--help`` for each)."""

    checkpoint: Path
    data_dir: Path | None = None
    candidates: Path | None = None
    annotations: Path | None = None
    series: list[str] | None = None
    split: str | None = None
    out: Path | None = None
    batch_size: int = 64
    tta_views: int = DEFAULT_VIEW_COUNT
    tta_top: int = DEFAULT_VIEWS_TOP
    nms_mm: float = NMS_RADIUS_MM
    device: str = "auto"
    precision: str = "auto"
    channels_last: str = "auto"
    prefetch: bool = True


def read_candidates(data_dir: Path, candidates_csv: Path | None,
                    annotations_csv: Path | None) -> tuple[list[CandidateInfo], bool]:
    """All candidates of the scans on disk, sorted as training sorted them.

    Scans scored for the first time often come with a candidates list and no annotations:
    then diameters are unknown (0). That changes nothing in which *scans* a split picks, only
    the order that a candidate-level split depends on.

    Returns:
        ``(candidates, has_annotations)``.
    """
    annotations_csv = annotations_csv or find_optional_csv(data_dir, ANNOTATION_FILE_NAMES)
    return get_candidate_info_list(data_dir, candidates_csv, annotations_csv), annotations_csv is not None


def default_split(data_dir: Path, train_args: dict[str, Any], has_series: bool) -> str:
    """The split to score when none is given.

    On the data the checkpoint was trained on, only its held-out scans are fair to score
    ("val"); any other data dir holds new scans, all of them unseen ("all"), as does an explicit
    ``--series`` list.
    """
    if has_series:
        return "all"
    trained_on = train_args.get("data_dir")
    same = trained_on is not None and Path(trained_on).resolve() == Path(data_dir).resolve()
    if not same:
        log.info("%s is not the training run's data dir (%s): scoring every scan (--split all)", data_dir,
                 trained_on or "not recorded")
    return "val" if same else "all"


def select_candidates(candidates: Sequence[CandidateInfo], split: str, val_stride: int, split_mode: str,
                      series: Sequence[str] | None = None,
                      holdout_series: Collection[str] = ()) -> list[CandidateInfo]:
    """The candidates of one side of the training run's split, optionally of some scans only.

    Args:
        candidates: the full sorted list (as :func:`read_candidates` gives it).
        split: "val", "train" or "all".
        val_stride, split_mode: the training run's ``--val-stride`` and ``--split``.
        series: keep only these series uids.
        holdout_series: the scans a cross-validation fold's run held out altogether; when given,
            they are "val" and every other scan is "train".

    Raises:
        DataError: a uid in ``series`` has no candidates on disk, or lies on the other side.
    """
    if split == "all":
        selected = list(candidates)
    elif holdout_series:
        held_out = set(holdout_series)
        selected = [c for c in candidates if (c.series_uid in held_out) == (split == "val")]
    else:
        selected = split_candidates(candidates, val_stride, is_val=split == "val", split=split_mode)
    if series is None:
        return selected
    known = {c.series_uid for c in candidates}
    in_split = {c.series_uid for c in selected}
    for uid in series:
        if uid not in known:
            raise DataError(f"--series {uid}: no candidates of that series on a scan on disk")
        if uid not in in_split:
            raise DataError(f"--series {uid} is not in the {split} split of the training run "
                            f"(val_stride={val_stride}, split={split_mode}); use --split all")
    wanted = set(series)
    return [c for c in selected if c.series_uid in wanted]


def make_jobs(candidates: Sequence[CandidateInfo], series_paths: dict[str, Path]) -> list[ScanJob]:
    """One job per scan (sorted by uid), candidates in the order of ``candidates``."""
    centers: dict[str, list[XyzTuple]] = defaultdict(list)
    for info in candidates:
        centers[info.series_uid].append(info.center_xyz)
    return [ScanJob(uid, series_paths[uid], centers[uid]) for uid in sorted(centers)]


def result_rows(scored: Iterable[tuple[ScanJob, np.ndarray]], nms_mm: float = 0.0) -> Iterator[list[str]]:
    """The results file's rows, scan by scan; ``nms_mm`` > 0 applies
    :func:`~luna.eval.suppression.suppress_neighbours` to each scan's probabilities first."""
    for job, probabilities in scored:
        probabilities = suppress_neighbours(np.asarray(job.centers_xyz), probabilities, nms_mm)
        yield from prediction_rows([job.series_uid] * len(probabilities), job.centers_xyz, probabilities)


def crop_of_checkpoint(ckpt_path: Path, ckpt: dict[str, Any]) -> CropConfig:
    """The crops a checkpoint's model was trained on; runs from before ``--crop-edge`` existed used
    the reference's shift rule."""
    train_args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    try:
        return CropConfig(shape_irc=tuple(ckpt["model_config"].get("crop_shape_irc", CROP_SHAPE_IRC)),
                          edge=str(train_args.get("crop_edge", "shift")),
                          voxel_mm=float(train_args.get("crop_mm", 0.0)))
    except ValueError as exc:
        raise DataError(f"{ckpt_path}: {exc}") from None


@dataclass
class Selection:
    """What a prediction run scores: the scans (one job each) of one side of the split."""

    data_dir: Path
    split: str
    val_stride: int
    split_mode: str
    n_candidates: int
    jobs: list[ScanJob]


def select_jobs(config: PredictConfig, train_args: dict[str, Any]) -> Selection:
    """The data dir, split and candidates to score, from the flags and the checkpoint's run."""
    data_dir = config.data_dir or (Path(train_args["data_dir"]) if train_args.get("data_dir") else default_data_dir())
    split = config.split or default_split(data_dir, train_args, bool(config.series))
    val_stride = int(train_args.get("val_stride", DEFAULT_VAL_STRIDE))
    split_mode = str(train_args.get("split", DEFAULT_SPLIT_MODE))
    holdout = train_args.get("holdout_series") or ()
    series_paths = find_series_files(data_dir)
    candidates, has_annotations = read_candidates(data_dir, config.candidates, config.annotations)
    if not has_annotations and split != "all" and split_mode == "candidate":
        raise DataError(f"--split {split}: the run split by candidate, which depends on the nodule "
                        f"diameters; give --annotations (none found in {data_dir})")
    selected = select_candidates(candidates, split, val_stride, split_mode, config.series, holdout)
    if not selected:
        raise DataError(f"the {split} split of {data_dir} is empty (val_stride={val_stride}, split={split_mode})")
    return Selection(data_dir, split, val_stride, split_mode, len(selected), make_jobs(selected, series_paths))


@dataclass
class ScoringModel:
    """A network ready to score crops, and what the run that made it says about them."""

    model: nn.Module  # (N, 1, I, R, C) crops -> (logits, probabilities)
    step_cfg: StepConfig
    crop: CropConfig
    train_args: dict[str, Any]
    described: str  # for the log: where it came from and how it runs


def checkpoint_model(ckpt_path: Path, config: PredictConfig, device: torch.device) -> ScoringModel:
    """A checkpoint's network on ``device`` and the configured precision, cropping as it was trained."""
    ckpt = load_checkpoint(ckpt_path)
    model = load_model(ckpt_path, ckpt)
    train_args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    perf = resolve_performance(config.precision, config.channels_last, device)
    model = prepare_model(model, device, perf.channels_last).eval()
    return ScoringModel(model, StepConfig(device, perf.precision, perf.channels_last),
                        crop_of_checkpoint(ckpt_path, ckpt), train_args,
                        f"{ckpt_path} epoch {ckpt.get('epoch', '?')} on {device}, {perf.precision}, "
                        f"channels_last={perf.channels_last}")


def exported_model(path: Path, model_format: str, config: PredictConfig) -> ScoringModel:
    """An exported model (checked against its card), in float32 as it was exported."""
    if config.precision not in ("auto", "fp32") or config.channels_last == "on":
        raise UsageError(f"{path}: an exported model runs in float32 on contiguous crops; drop --precision "
                         f"{config.precision} / --channels-last {config.channels_last}")
    exported = load_exported(path, model_format, config.device)
    args = exported.card.get("training", {}).get("args")
    return ScoringModel(exported.model, StepConfig(exported.input_device, "fp32", False), exported.crop,
                        args if isinstance(args, dict) else {},
                        f"{path} ({model_format}, epoch {exported.card.get('model', {}).get('epoch', '?')}) "
                        f"on {exported.input_device}, fp32")


def predict(config: PredictConfig, share_out: bool = True) -> Path:
    """Score the selected candidates and write the results file; return its path.

    Under ``torchrun`` (and ``share_out``) each process scores every N-th scan and rank 0 writes
    the one results file, row for row the file of a single process. A caller that runs this in
    one process of a torchrun job (cross-validation's rank 0) passes ``share_out=False``.
    """
    ctx = init_distributed(config.device) if share_out else DistContext(device=resolve_device(config.device))
    try:
        return _predict(config, ctx)
    finally:
        if share_out:
            cleanup_distributed()


def _predict(config: PredictConfig, ctx: DistContext) -> Path:
    ckpt_path = resolve_checkpoint_path(config.checkpoint)
    model_format = exported_format(ckpt_path)
    scoring = exported_model(ckpt_path, model_format, config) if model_format else \
        checkpoint_model(ckpt_path, config, ctx.device)
    selection = select_jobs(config, scoring.train_args)
    out = config.out or ckpt_path.parent / predictions_name(selection.split)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as {out / 'predictions.csv'}")
    crop = scoring.crop
    if config.tta_views == 8 and crop.shape_irc[1] != crop.shape_irc[2]:
        raise UsageError(f"--tta-views 8 needs square crops, the model takes {crop.shape_irc}; use 4")
    if ctx.is_primary:
        log.info("Scoring %d candidates of %d scans (%s split, val_stride=%d, split=%s; %d process(es)) with %s, "
                 "crop edge %s, voxels %s, %d view(s)%s, NMS radius %g mm",
                 selection.n_candidates, len(selection.jobs), selection.split, selection.val_stride,
                 selection.split_mode, ctx.world_size, scoring.described, crop.edge,
                 f"{crop.voxel_mm:g} mm" if crop.voxel_mm else "as scanned", config.tta_views,
                 f" for the best {config.tta_top} of each scan by one view"
                 if config.tta_views > 1 and config.tta_top else "", config.nms_mm)

    # Scan by scan, then one atomic write: an error half-way leaves no file, or the old one. The
    # folder is made first, so that a path that cannot be written fails before minutes of work.
    if ctx.is_primary:
        out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    mine = list(range(ctx.rank, len(selection.jobs), ctx.world_size))
    scored = iter_scan_scores(scoring.model, [selection.jobs[i] for i in mine], scoring.step_cfg, config.batch_size,
                              crop, config.tta_views, config.tta_top, config.prefetch)
    progress = (item for _, item in enumerate_with_estimate(scored, "Scoring", total=len(mine)))
    done = [(index, list(result_rows([item], config.nms_mm))) for index, item in zip(mine, progress)]
    rows = merge_rows(gather_objects(done, ctx))
    if ctx.is_primary:
        write_table(out, PREDICTION_COLUMNS, rows)
        seconds = time.perf_counter() - started
        log.info("Scored %d scans, %d candidates in %.1f s (%.1f candidates/s); wrote %s",
                 len(selection.jobs), len(rows), seconds, len(rows) / max(seconds, 1e-9), out)
    barrier(ctx)
    return out

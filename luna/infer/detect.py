"""From a CT scan to findings: segmentation -> grouping -> classifier -> suppression -> results.

For each scan, one at a time (the scan, its copy on the segmentation grid and the probability
map are the memory held):

1. read it (:func:`read_scan`, the one place a scan file is opened);
2. resample it to the segmentation model's grid and segment the lung region
   (:mod:`luna.infer.segmentation`);
3. group the marked voxels into candidates (:mod:`luna.infer.grouping`), and add the blobs of
   the scan (:mod:`luna.infer.blobs`: the small and faint nodules the segmentation misses);
4. score each candidate with the classifier, its test-time views for the best ``tta_top``
   (:func:`luna.infer.scoring.score_scan`), then lower near neighbours of a better one
   (:mod:`luna.eval.suppression`), exactly as ``luna predict`` does with given candidates, and
   keep the ``max_candidates`` most probable as findings;
5. keep one :class:`~luna.infer.findings.ScanFindings`: a JSON beside the results file, rows in it,
   and, if asked for, a picture of each finding the classifier calls a nodule (drawn by the
   caller's ``draw``: pictures are the report layer's).

Under ``torchrun`` each process takes every N-th scan; rank 0 gathers the rows and writes the
one results file, in the order a single process writes it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn

from luna.data.crops import CropConfig
from luna.data.seg_grid import SegGrid, lung_region, to_grid
from luna.errors import DataError, UsageError
from luna.eval.suppression import NMS_RADIUS_MM, suppress_neighbours
from luna.infer.blobs import MAX_BLOBS, find_blobs
from luna.infer.findings import Finding, ScanFindings, merge_rows, sorted_findings
from luna.infer.grouping import THRESHOLD, group_candidates
from luna.infer.predict import PredictConfig, crop_of_checkpoint, default_split, select_jobs
from luna.infer.scoring import score_scan
from luna.infer.segmentation import segment_volume
from luna.io.ct import Ct
from luna.io.dicom import list_series, pick_series
from luna.io.scans import find_series_files, scan_uid
from luna.luna16.candidates import split_series
from luna.luna16.csvfiles import PREDICTION_COLUMNS, check_series_uid, read_annotations, write_table
from luna.luna16.paths import ANNOTATION_FILE_NAMES, default_data_dir, find_optional_csv, findings_dir
from luna.models.registry import model_kind
from luna.models.views import DEFAULT_VIEW_COUNT, DEFAULT_VIEWS_TOP
from luna.progress import enumerate_with_estimate
from luna.runtime.checkpoint import load_checkpoint, load_model, resolve_checkpoint_path
from luna.runtime.device import StepConfig, prepare_model, resolve_performance
from luna.runtime.distributed import DistContext, barrier, cleanup_distributed, gather_objects, init_distributed

log = logging.getLogger(__name__)

SPLIT_CHOICES = ("val", "train", "all")
# Findings per scan at most: many more than the nodules a scan has (LUNA16 scores the top 100).
MAX_CANDIDATES = 50
# Pictures are drawn for findings the classifier calls nodules.
PICTURE_THRESHOLD = 0.5

# draw(ct, series uid, findings to draw, folder) -> the picture files it wrote.
DrawFindings = Callable[[Ct, str, Sequence[Finding], Path], list[Path]]


@dataclass
class DetectConfig:
    """What ``luna detect`` is told (see its ``--help`` for each)."""

    segmentation: Path
    classifier: Path
    out: Path
    data_dir: Path | None = None
    scans: list[Path] | None = None
    series_uid: str | None = None
    split: str | None = None
    pictures: bool = False
    max_candidates: int = MAX_CANDIDATES
    max_blobs: int = MAX_BLOBS
    threshold: float = THRESHOLD
    batch_size: int = 64
    tta_views: int = DEFAULT_VIEW_COUNT
    tta_top: int = DEFAULT_VIEWS_TOP
    nms_mm: float = NMS_RADIUS_MM
    device: str = "auto"
    precision: str = "auto"
    channels_last: str = "auto"


@dataclass
class Models:
    """The two networks on their device, and what they need to know about the scans."""

    segmenter: nn.Module
    classifier: nn.Module
    grid: SegGrid
    crop: CropConfig
    step_cfg: StepConfig
    seg_args: dict[str, Any]
    cls_args: dict[str, Any]


def read_scan(path: Path, series_uid: str | None = None) -> Ct:
    """The one place detection opens a scan file."""
    return Ct(path, series_uid)


def series_uid_of(path: Path, series_uid: str | None = None) -> str:
    """A scan's series uid: a DICOM folder's SeriesInstanceUID (``series_uid`` picks one of
    several), else the file name without its extension (``.nii.gz`` as one)."""
    path = Path(path)
    if path.is_dir():
        return pick_series(path, list_series(path), series_uid)
    return check_series_uid(scan_uid(path), str(path))


def _load(path: Path, kind: str, flag: str) -> tuple[Path, dict[str, Any], nn.Module]:
    ckpt_path = resolve_checkpoint_path(path)
    ckpt = load_checkpoint(ckpt_path)
    found = model_kind(ckpt.get("model_name"))
    if found != kind:
        raise UsageError(f"{flag} {path}: holds a {found or 'unknown'} model ({ckpt.get('model_name')!r}), "
                         f"not a {kind} model")
    return ckpt_path, ckpt, load_model(ckpt_path, ckpt)


def load_models(config: DetectConfig, ctx: DistContext) -> Models:
    """Both checkpoints, checked to be what their flags say, on the device."""
    seg_path, seg_ckpt, segmenter = _load(config.segmentation, "segmentation", "--segmentation")
    cls_path, cls_ckpt, classifier = _load(config.classifier, "classifier", "--classifier")
    seg_args, cls_args = seg_ckpt.get("args") or {}, cls_ckpt.get("args") or {}
    grid = SegGrid(float(seg_args.get("pixel_mm", 0.0)), float(seg_args.get("slice_mm", 0.0)))
    crop = crop_of_checkpoint(cls_path, cls_ckpt)
    if config.tta_views == 8 and crop.shape_irc[1] != crop.shape_irc[2]:
        raise UsageError(f"--tta-views 8 needs square crops, the classifier takes {crop.shape_irc}; use 4")
    perf = resolve_performance(config.precision, config.channels_last, ctx.device)
    segmenter = prepare_model(segmenter, ctx.device, perf.channels_last).eval()
    classifier = prepare_model(classifier, ctx.device, perf.channels_last).eval()
    if ctx.is_primary:
        log.info("Segmentation %s (epoch %s, grid %s), classifier %s (epoch %s), on %s, %s, channels_last=%s, "
                 "%d view(s), NMS radius %g mm", seg_path, seg_ckpt.get("epoch", "?"), grid, cls_path,
                 cls_ckpt.get("epoch", "?"), ctx.device, perf.precision, perf.channels_last, config.tta_views,
                 config.nms_mm)
    return Models(segmenter, classifier, grid, crop, StepConfig(ctx.device, perf.precision, perf.channels_last),
                  seg_args, cls_args)


def select_scans(config: DetectConfig, models: Models) -> list[tuple[str, Path]]:
    """``(series uid, file)`` of every scan to detect in, in the order the results list them."""
    if config.scans:
        if config.data_dir is not None:
            raise UsageError("give scan files or --data-dir, not both")
        if config.split not in (None, "all"):
            raise UsageError("--split picks scans of a data dir; it does not go with scan files")
        scans = [(series_uid_of(path, config.series_uid), Path(path)) for path in config.scans]
        uids = [uid for uid, _ in scans]
        if len(set(uids)) != len(uids):
            raise UsageError(f"two scan files have the same series uid {sorted(u for u in uids if uids.count(u) > 1)[0]}")
        return scans
    data_dir = config.data_dir or default_data_dir()
    split = config.split or default_split(data_dir, models.cls_args, False)
    if split == "all":
        return sorted(find_series_files(data_dir).items())
    # The classifier run's own split of its candidates (as `luna predict --split` takes it).
    selection = select_jobs(PredictConfig(config.classifier, data_dir=data_dir, split=split), models.cls_args)
    scans = [(job.series_uid, job.scan_path) for job in selection.jobs]
    _warn_if_seen_by_segmentation(data_dir, scans, models.seg_args, split)
    return scans


def _warn_if_seen_by_segmentation(data_dir: Path, scans: list[tuple[str, Path]], seg_args: dict[str, Any],
                                  split: str) -> None:
    """A held-out scan of the classifier may have trained the segmentation model: say so."""
    if split != "val" or not seg_args.get("data_dir"):
        return
    if Path(seg_args["data_dir"]).resolve() != Path(data_dir).resolve():
        return
    annotations = seg_args.get("annotations") or find_optional_csv(data_dir, ANNOTATION_FILE_NAMES)
    if annotations is None:
        return
    on_disk = find_series_files(data_dir)
    held_out = split_series(list(on_disk), set(read_annotations(annotations, series_uids=set(on_disk))),
                            int(seg_args.get("val_stride", 10)))
    seen = [uid for uid, _ in scans if uid not in held_out]
    if seen:
        log.warning("%d of the %d scans were training scans of the segmentation run (--val-stride %s): its "
                    "candidates there are not a held-out result", len(seen), len(scans), seg_args.get("val_stride"))


@dataclass(frozen=True)
class Candidate:
    """A point to score, from either source, with the size and segmentation peak a finding reports."""

    center_xyz: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    segmentation_peak: float
    source: str  # "segmentation" or "blob"


def find_candidates(models: Models, ct: Ct, config: DetectConfig, seconds: dict[str, float]) -> list[Candidate]:
    """Steps 2-3 of the module docstring, before the classifier: components, then blobs."""
    started = time.perf_counter()
    volume = to_grid(ct, models.grid)
    region = lung_region(volume)
    seconds["resample"] = time.perf_counter() - started
    probability = segment_volume(models.segmenter, volume.hu_a, models.step_cfg, region=region)
    seconds["segment"] = time.perf_counter() - started - seconds["resample"]
    candidates = [Candidate(c.center_xyz, c.diameter_mm, c.volume_mm3, c.max_probability, "segmentation")
                  for c in group_candidates(probability, volume, config.threshold)]
    seconds["group"] = time.perf_counter() - started - seconds["resample"] - seconds["segment"]
    started = time.perf_counter()
    for blob in find_blobs(ct, config.max_blobs) if config.max_blobs else []:
        # The segmentation's verdict at the blob's centre, for the JSON.
        irc = np.clip(np.rint(volume.xyz2irc_float(blob.center_xyz)).astype(int), 0, np.array(volume.hu_a.shape) - 1)
        candidates.append(Candidate(blob.center_xyz, 2 * blob.radius_mm, float(np.pi * 4 / 3 * blob.radius_mm ** 3),
                                    float(probability[tuple(irc)]), "blob"))
    seconds["blobs"] = time.perf_counter() - started
    return candidates


def detect_scan(models: Models, series_uid: str, path: Path, config: DetectConfig) -> tuple[Ct, ScanFindings]:
    """Steps 1-4 of the module docstring for one scan."""
    started = time.perf_counter()
    ct = read_scan(path, series_uid)
    seconds = {"read": time.perf_counter() - started}
    candidates = find_candidates(models, ct, config, seconds)
    started = time.perf_counter()
    centers_xyz = np.array([c.center_xyz for c in candidates], dtype=np.float64).reshape(-1, 3)
    # Scored as luna predict scores given candidates: all at one view, the best tta_top again
    # at every view; then near neighbours (a nodule's component and its blob) are lowered.
    scores = score_scan(models.classifier, ct, centers_xyz, models.step_cfg, config.batch_size, models.crop,
                        config.tta_views, config.tta_top) if len(candidates) else np.zeros(0)
    suppressed = suppress_neighbours(centers_xyz, scores, config.nms_mm)
    # The findings: the most probable after the views and the suppression. Cutting after the
    # views, not at one view, keeps nodules the single view underrates.
    keep = np.sort(np.argsort(-suppressed, kind="stable")[:config.max_candidates])
    candidates, scores, suppressed = [candidates[k] for k in keep], scores[keep], suppressed[keep]
    seconds["classify"] = time.perf_counter() - started
    findings = [Finding(float(p), float(raw), tuple(float(v) for v in c.center_xyz),
                        tuple(float(v) for v in ct.xyz2irc_float(c.center_xyz)), c.diameter_mm, c.volume_mm3,
                        c.segmentation_peak, c.source) for c, p, raw in zip(candidates, suppressed, scores)]
    geometry = {"origin_xyz": list(map(float, ct.origin_xyz)), "spacing_xyz": list(map(float, ct.spacing_xyz)),
                "direction": [float(v) for v in np.asarray(ct.direction).ravel()],
                "shape_irc": [int(n) for n in ct.hu_a.shape]}
    return ct, ScanFindings(series_uid, str(path), geometry, sorted_findings(findings), seconds)


def detect(config: DetectConfig, draw: DrawFindings | None = None) -> Path:
    """Detect in every selected scan and write the results file; return its path."""
    if config.out.is_dir():
        raise UsageError(f"--out {config.out} is a directory; give a file name such as {config.out / 'results.csv'}")
    ctx = init_distributed(config.device)
    try:
        models = load_models(config, ctx)
        scans = select_scans(config, models)
        if not scans:
            raise DataError("no scans to detect in")
        folder = findings_dir(config.out)
        mine = list(range(ctx.rank, len(scans), ctx.world_size))
        if ctx.is_primary:
            log.info("Detecting in %d scans (%d process(es)); per-scan JSON%s in %s", len(scans), ctx.world_size,
                     " and pictures" if config.pictures else "", folder)
        started = time.perf_counter()
        done: list[tuple[int, list[list[str]]]] = []
        for _, index in enumerate_with_estimate(mine, "Detecting", total=len(mine)):
            uid, path = scans[index]
            ct, found = detect_scan(models, uid, path, config)
            found.write_json(folder)
            if config.pictures and draw is not None:
                draw(ct, uid, [f for f in found.findings if f.probability > PICTURE_THRESHOLD], folder)
            del ct
            done.append((index, found.rows()))
            log.info("%s: %d findings, %d above 0.5 (%s)", uid, len(found.findings),
                     sum(f.probability > PICTURE_THRESHOLD for f in found.findings),
                     ", ".join(f"{k} {v:.1f} s" for k, v in found.seconds.items()))
        rows = merge_rows(gather_objects(done, ctx))
        if ctx.is_primary:
            config.out.parent.mkdir(parents=True, exist_ok=True)
            write_table(config.out, PREDICTION_COLUMNS, rows)
            log.info("Detected %d findings in %d scans in %.1f s; wrote %s", len(rows), len(scans),
                     time.perf_counter() - started, config.out)
        barrier(ctx)
        return config.out
    finally:
        cleanup_distributed()


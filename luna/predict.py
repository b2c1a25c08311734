"""``luna predict``: score candidates of scans with a trained model and write a LUNA16 results file.

The output (``seriesuid,coordX,coordY,coordZ,probability``) is what ``luna evaluate`` and the
official LUNA16 scripts read. Scans are read directly, one at a time, so they need not be in
the crop cache and nothing but the results file is written. On the training run's own data dir
the default, ``--split val``, scores exactly the scans that the run held out for validation; on
any other data dir every scan is new, and every scan is scored.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from torch import nn

from luna.app import HelpFormatter, add_common_args, non_negative_float, positive_int, run_app
from luna.atomic import atomic_open
from luna.candidates import (CandidateInfo, find_annotations_csv, find_series_files, get_candidate_info_list,
                             split_candidates)
from luna.checkpoint import BEST_NAME, LAST_NAME, load_checkpoint, load_model_state
from luna.config import CROP_SHAPE_IRC, CropConfig
from luna.distributed import resolve_device
from luna.engine import StepConfig
from luna.errors import DataError, UsageError
from luna.geometry import XyzTuple
from luna.model import VIEW_COUNTS, build_model, prepare_model
from luna.progress import enumerate_with_estimate
from luna.recipe import resolve_performance
from luna.scoring import ScanJob, iter_scan_scores
from luna.suppression import NMS_RADIUS_MM, SUPPRESSED_SCALE, suppress_neighbours

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
# What training assumed when a checkpoint does not record its split flags.
DEFAULT_VAL_STRIDE = 10
DEFAULT_SPLIT_MODE = "scan"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="luna predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a checkpoint file, or a training run directory (its best.pt, which luna train makes the "
                             "final weights unless told otherwise by --best-metric)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="LUNA16-layout root holding subset*/ and the CSVs (default: the training "
                             "run's --data-dir, else $LUNA_DATA_DIR or data/luna16)")
    parser.add_argument("--candidates", type=Path, default=None,
                        help="candidates CSV (default: candidates.csv or candidates_V2.csv in the data dir)")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="annotations CSV, used to order candidates as training did (default: "
                             "annotations.csv in the data dir; needed only to redo a candidate-level split)")
    parser.add_argument("--series", nargs="+", default=None, metavar="UID",
                        help="only these series (default: every scan of the split)")
    parser.add_argument("--split", choices=("val", "train", "all"), default=None,
                        help="val: the scans the training run held out (same val_stride and split as "
                             "the checkpoint's run); train: the others; all: every scan on disk "
                             "(default: val on the training run's own data dir, else all; all with --series)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results CSV (default: predictions_<split>.csv beside the checkpoint)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="crops per forward pass")
    parser.add_argument("--tta-views", type=int, choices=VIEW_COUNTS, default=8,
                        help="test-time augmentation: average the model over this many in-plane symmetric "
                             "views of each crop (turns, mirror images); 1 = off, the compute grows with it")
    parser.add_argument("--nms-mm", type=non_negative_float, default=NMS_RADIUS_MM,
                        help="non-maximum suppression: a candidate closer than this to a higher-scoring "
                             f"one of its scan is taken as the same finding and its probability is scaled by "
                             f"{SUPPRESSED_SCALE:g} (every row is still written); 0 = off")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="autocast dtype; auto: bf16 where the device supports it, else fp32")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="channels_last_3d memory format; auto: on")
    parser.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=True,
                        help="read the next scan in a background thread while this one is scored")
    return add_common_args(parser)


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
    """Rebuild the checkpoint's network with its weights, on the CPU.

    Raises:
        DataError: no usable model config, or weights that do not fit it.
    """
    config = ckpt.get("model_config")
    if not isinstance(config, dict):
        raise DataError(f"checkpoint {ckpt_path}: no model_config to rebuild the model from")
    model = build_model(config)
    load_model_state(model, ckpt, ckpt_path, expected_name=getattr(model, "name", None))
    return model


def read_candidates(data_dir: Path, candidates_csv: Path | None,
                    annotations_csv: Path | None) -> tuple[list[CandidateInfo], bool]:
    """All candidates of the scans on disk, sorted as training sorted them.

    Scans scored for the first time often come with a candidates list and no annotations:
    then diameters are unknown (0). That changes nothing in which *scans* a split picks, only
    the order that a candidate-level split depends on.

    Returns:
        ``(candidates, has_annotations)``.
    """
    annotations_csv = annotations_csv or find_annotations_csv(data_dir)
    return get_candidate_info_list(data_dir, candidates_csv, annotations_csv), annotations_csv is not None


def default_split(data_dir: Path, train_args: dict[str, Any], has_series: bool) -> str:
    """The split to score when ``--split`` is not given.

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
                      series: Sequence[str] | None = None) -> list[CandidateInfo]:
    """The candidates of one side of the training run's split, optionally of some scans only.

    Args:
        candidates: the full sorted list (as :func:`read_candidates` gives it).
        split: "val", "train" or "all".
        val_stride, split_mode: the training run's ``--val-stride`` and ``--split``.
        series: keep only these series uids.

    Raises:
        DataError: a uid in ``series`` has no candidates on disk, or lies on the other side.
    """
    selected = list(candidates) if split == "all" else split_candidates(
        candidates, val_stride, is_val=split == "val", split=split_mode)
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


def write_results(path: Path, scored: Iterable[tuple[ScanJob, np.ndarray]], nms_mm: float = 0.0) -> int:
    """Write a LUNA16 results file atomically, consuming ``scored`` as it goes.

    Rows go to a temp file beside ``path`` that replaces it only once every scan is scored:
    an error half-way leaves no file, or the previous one untouched. ``nms_mm`` > 0 applies
    :func:`luna.suppression.suppress_neighbours` to each scan's probabilities first.

    Returns:
        The number of rows written.
    """
    rows = 0
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RESULT_COLUMNS)
        for job, probabilities in scored:
            probabilities = suppress_neighbours(np.asarray(job.centers_xyz), probabilities, nms_mm)
            # repr gives back the candidate's coordinates exactly as the CSV had them.
            writer.writerows([job.series_uid, repr(float(x)), repr(float(y)), repr(float(z)), f"{p:.6g}"]
                             for (x, y, z), p in zip(job.centers_xyz, probabilities.tolist()))
            rows += len(probabilities)
    return rows


class LunaPredictApp:
    """Score candidates. ``LunaPredictApp(["--checkpoint", "runs/luna/<run>"]).main()``."""

    def __init__(self, argv: Sequence[str] | None = None):
        self.args = get_args_parser().parse_args(argv)

    def main(self) -> Path:
        """Score the selected candidates; return the path of the results file."""
        args = self.args
        log.info("Starting %s, %s", type(self).__name__, vars(args))
        ckpt_path = resolve_checkpoint_path(args.checkpoint)
        ckpt = load_checkpoint(ckpt_path)
        model = load_model(ckpt_path, ckpt)
        train_args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}

        data_dir = args.data_dir or Path(train_args.get("data_dir") or os.environ.get("LUNA_DATA_DIR", "data/luna16"))
        split = args.split or default_split(data_dir, train_args, bool(args.series))
        val_stride = int(train_args.get("val_stride", DEFAULT_VAL_STRIDE))
        split_mode = str(train_args.get("split", DEFAULT_SPLIT_MODE))
        series_paths = find_series_files(data_dir)
        candidates, has_annotations = read_candidates(data_dir, args.candidates, args.annotations)
        if not has_annotations and split != "all" and split_mode == "candidate":
            raise DataError(f"--split {split}: the run split by candidate, which depends on the nodule "
                            f"diameters; give --annotations (none found in {data_dir})")
        selected = select_candidates(candidates, split, val_stride, split_mode, args.series)
        if not selected:
            raise DataError(f"the {split} split of {data_dir} is empty (val_stride={val_stride}, split={split_mode})")
        jobs = make_jobs(selected, series_paths)
        out = args.out or ckpt_path.parent / f"predictions_{split}.csv"
        if out.is_dir():
            raise UsageError(f"--out {out} is a directory; give a file name such as {out / 'predictions.csv'}")

        device = resolve_device(args.device)
        perf = resolve_performance(argparse.Namespace(precision=args.precision, channels_last=args.channels_last,
                                                      compile=False), device)
        model = prepare_model(model, device, perf.channels_last).eval()
        step_cfg = StepConfig(device, perf.precision, perf.channels_last)
        # Crop as the model was trained: runs from before --crop-edge existed used the shift rule.
        try:
            crop = CropConfig(shape_irc=tuple(ckpt["model_config"].get("crop_shape_irc", CROP_SHAPE_IRC)),
                              edge=str(train_args.get("crop_edge", "shift")),
                              voxel_mm=float(train_args.get("crop_mm", 0.0)))
        except ValueError as exc:
            raise DataError(f"{ckpt_path}: {exc}") from None
        if args.tta_views == 8 and crop.shape_irc[1] != crop.shape_irc[2]:
            raise UsageError(f"--tta-views 8 needs square crops, the model takes {crop.shape_irc}; use 4")
        log.info("Scoring %d candidates of %d scans (%s split, val_stride=%d, split=%s) with %s epoch %s "
                 "on %s, %s, channels_last=%s, crop edge %s, voxels %s, %d view(s), NMS radius %g mm", len(selected), len(jobs),
                 split, val_stride, split_mode, ckpt_path, ckpt.get("epoch", "?"), device, perf.precision,
                 perf.channels_last, crop.edge,
                 f"{crop.voxel_mm:g} mm" if crop.voxel_mm else "as scanned", args.tta_views, args.nms_mm)

        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        scored = iter_scan_scores(model, jobs, step_cfg, args.batch_size, crop, args.tta_views, args.prefetch)
        rows = write_results(out, (item for _, item in enumerate_with_estimate(scored, "Scoring", total=len(jobs))),
                             args.nms_mm)
        seconds = time.perf_counter() - started
        log.info("Scored %d scans, %d candidates in %.1f s (%.1f candidates/s); wrote %s",
                 len(jobs), rows, seconds, rows / max(seconds, 1e-9), out)
        return out


if __name__ == "__main__":
    sys.exit(run_app(LunaPredictApp, prog="luna predict"))

"""The segmentation trainer: setup, one epoch, its log, its checkpoint, and the loop around them.

``SegTrainer(config).fit()`` is what ``luna train-seg`` runs, with the conventions of ``luna
train``: a run directory with run.json, TensorBoard (``trn_seg`` / ``val_seg`` writers),
summary.csv and last/best checkpoints; an exact ``--resume``; one code path for one process or
many under ``torchrun`` (each process trains on its share of each epoch's crops and validates
its share of the held-out scans; rank 0 alone writes).

Data: the scans of the data dir are split by scan as the classifier splits them (every
``val_stride``-th scan with nodules, and of those without, is held out), so a classifier and a
segmentation model trained on one data dir with one stride hold out the same scans. Every scan
goes into the segmentation cache once (:mod:`luna.data.seg_cache`); epochs read only the cache.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from luna.data.seg_cache import SegCache, fill_seg_cache
from luna.data.seg_dataset import SegScan, SegTrainDataset
from luna.data.seg_grid import lung_region
from luna.errors import DataError, UsageError
from luna.io.scans import find_series_files
from luna.luna16.candidates import split_series
from luna.luna16.csvfiles import read_annotations
from luna.luna16.paths import ANNOTATION_FILE_NAMES, LAST_NAME, find_csv
from luna.models.registry import build_model, count_parameters
from luna.runtime.checkpoint import CheckpointSaver, load_checkpoint, load_model_state, make_checkpoint
from luna.runtime.device import StepConfig, prepare_model, resolve_performance
from luna.runtime.distributed import DistContext, all_reduce_sum, barrier, seed_everything
from luna.runtime.rng import restore_rng_state
from luna.runtime.rundir import write_run_meta
from luna.train.recipe import build_optimizer, build_scheduler
from luna.train.runlog import RunLogger
from luna.train.seg_config import SegTrainConfig
from luna.train.seg_engine import VAL_TOTALS, ValidationScan, train_metrics, train_seg_epoch, val_metrics, validate_scan
from luna.train.session import run_names, run_session

log = logging.getLogger(__name__)

MODEL_NAME = "unet2d"
WARMUP_STEPS = 50
VAL_BATCH_SLICES = 16
EXAMPLE_IMAGES = 4


class SegTrainer:
    """Train a segmentation model as ``config`` says; :meth:`fit` runs the whole job."""

    def __init__(self, config: SegTrainConfig, app_name: str = "SegTrainer"):
        self.config = config
        self.app_name = app_name
        # Absolute, so that `luna detect` can tell the training data from new scans anywhere.
        self.config.data_dir = Path(self.config.data_dir).absolute()

    def fit(self) -> Path:
        """Train; return the run directory. Out-of-memory becomes one line with a smaller batch."""
        return run_session(self.config.device, self.config.batch_size, self._train)

    def _train(self, ctx: DistContext) -> Path:
        self.ctx = ctx
        self._setup()
        for epoch in range(self.start_epoch, self.config.epochs + 1):
            self._epoch(epoch)
        if ctx.is_primary:
            self.runlog.close()
            log.info("Finished: run directory %s", self.run_dir)
        return self.run_dir

    # -- setup ----------------------------------------------------------------------------------
    def _setup(self) -> None:
        c, ctx = self.config, self.ctx
        if ctx.is_primary:
            log.info("Starting %s, %s", self.app_name, c)
        seed_everything(c.seed, ctx.rank)
        self.perf = resolve_performance(c.precision, c.channels_last, ctx.device)
        self.step_cfg = StepConfig(ctx.device, self.perf.precision, self.perf.channels_last)
        self.cache = SegCache(c.cache_dir, c.grid(), c.mask)
        train_scans, self.val_scans = self._scans()
        if ctx.is_primary:
            fill_seg_cache(self.cache, [(s.series_uid, s.path, s.nodules) for s in train_scans + self.val_scans],
                           c.num_workers)
        barrier(ctx)
        self.train_ds = SegTrainDataset(self.cache, train_scans, c.epoch_size, c.sampling(), c.seed)
        # The sampler is the one code path for 1..N processes; the dataset shuffles by itself.
        sampler = DistributedSampler(self.train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False)
        self.loader = DataLoader(self.train_ds, batch_size=c.batch_size, sampler=sampler, num_workers=c.num_workers,
                                 pin_memory=ctx.device.type == "cuda", prefetch_factor=4 if c.num_workers else None)

        self.model = prepare_model(build_model(c.model_config()), ctx.device, self.perf.channels_last)
        self.optimizer = build_optimizer(self.model, "adam", c.lr)
        self.scheduler = build_scheduler(self.optimizer, "cosine", WARMUP_STEPS, len(self.loader) * c.epochs)
        tb_dir, run_name, comment = run_names(c.resume, c.runs_dir, c.tb_prefix, c.comment)
        self.run_dir = Path(c.resume) if c.resume else tb_dir / f"{run_name}-{comment}"
        self.start_epoch, self.samples_seen = (self._restore() if c.resume else (1, 0))
        self.train_model = self.model
        if ctx.is_distributed:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if ctx.is_primary:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_run_meta(self.run_dir, tb_dir, run_name, comment)
            self.runlog = RunLogger(tb_dir, run_name, comment, self.run_dir,
                                    purge_step=self.samples_seen + 1 if c.resume else None, kind="seg")
            if c.resume:
                self.runlog.truncate_summary(self.start_epoch - 1)
            self.saver = CheckpointSaver(self.run_dir, "epoch", "max")
            log.info("Model %s: %d parameters on %s, precision %s, channels_last %s, %d process(es); "
                     "%d training scans (%d nodules), %d validation scans; grid %s",
                     MODEL_NAME, count_parameters(self.model), ctx.device, self.perf.precision,
                     self.perf.channels_last, ctx.world_size, len(train_scans), len(self.train_ds.nodule_scan),
                     len(self.val_scans), c.grid())

    def _scans(self) -> tuple[list[SegScan], list[SegScan]]:
        """The training and validation scans, split as the classifier splits them."""
        c = self.config
        paths = find_series_files(c.data_dir)
        annotations_csv = c.annotations or find_csv(c.data_dir, ANNOTATION_FILE_NAMES, "annotations", "--annotations")
        nodules = read_annotations(annotations_csv, series_uids=set(paths))
        val = split_series(list(paths), set(nodules), c.val_stride)
        scans = [SegScan(uid, paths[uid], nodules.get(uid, np.zeros((0, 4)))) for uid in sorted(paths)]
        train = [s for s in scans if s.series_uid not in val]
        held_out = [s for s in scans if s.series_uid in val]
        if not any(len(s.nodules) for s in train) or not held_out:
            raise DataError(f"{c.data_dir}: --val-stride {c.val_stride} leaves {len(train)} training scans "
                            f"({sum(len(s.nodules) for s in train)} nodules) and {len(held_out)} validation "
                            "scans; training needs nodules on both sides")
        return train, held_out

    def _restore(self) -> tuple[int, int]:
        """Load ``run_dir/last.pt`` into the training state; return (next epoch, samples seen)."""
        path = self.run_dir / LAST_NAME
        ckpt = load_checkpoint(path, map_location=self.ctx.device)
        load_model_state(self.model, ckpt, path, expected_name=MODEL_NAME)
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.scheduler.load_state_dict(ckpt["scheduler_state"])
        restore_rng_state(ckpt["rng_state"])
        if self.ctx.is_primary:
            log.info("Resuming %s after epoch %d (%d samples seen)", self.run_dir, ckpt["epoch"], ckpt["samples_seen"])
        return ckpt["epoch"] + 1, ckpt["samples_seen"]

    # -- one epoch ------------------------------------------------------------------------------
    def _epoch(self, epoch: int) -> None:
        c, ctx = self.config, self.ctx
        self.train_ds.set_epoch(epoch)
        if ctx.is_primary:
            log.info("Epoch %d of %d, %d training batches of size %d*%d, %d validation scans", epoch, c.epochs,
                     len(self.loader), c.batch_size, ctx.world_size, len(self.val_scans))
        start = time.monotonic()
        trn_totals = all_reduce_sum(train_seg_epoch(self.train_model, self.loader, self.optimizer, self.scheduler,
                                                    self.step_cfg, epoch, c.loss), ctx)
        self.samples_seen += int(trn_totals[1])
        train_seconds = time.monotonic() - start
        # Each process validates its share of the held-out scans; the counts are summed.
        mine = [self.cache.open(s.series_uid, s.path, s.nodules) for s in self.val_scans[ctx.rank::ctx.world_size]]
        val_totals = np.zeros(VAL_TOTALS)
        examples: list[ValidationScan] = []
        for entry in mine:
            scan = validate_scan(self.model, entry, self.step_cfg, VAL_BATCH_SLICES)
            val_totals += scan.totals
            if len(examples) < EXAMPLE_IMAGES and len(entry.nodules_irc):
                examples.append(scan)
        val_totals = all_reduce_sum(torch.from_numpy(val_totals), ctx).numpy()
        if ctx.is_primary:
            self._log_epoch(epoch, trn_totals, val_totals, examples, time.monotonic() - start, train_seconds)
            self._save(epoch)

    def _log_epoch(self, epoch: int, trn_totals: torch.Tensor, val_totals: np.ndarray,
                   examples: list[ValidationScan], seconds: float, train_seconds: float) -> None:
        trn, val = train_metrics(trn_totals), val_metrics(val_totals)
        log.info("E%d trn_seg  %.4f loss, %.4f precision, %.4f recall, %.4f f1 score (per voxel)", epoch,
                 trn["loss/all"], trn["pr/precision"], trn["pr/recall"], trn["pr/f1_score"])
        log.info("E%d val_seg  %.4f precision, %.4f recall, %.4f f1 score (per voxel); candidates hit %d of %d "
                 "nodules (recall %.3f), %.1f candidates per scan", epoch, val["pr/precision"], val["pr/recall"],
                 val["pr/f1_score"], val["nodules_hit"], val["nodules"], val["candidates/recall"],
                 val["candidates/per_scan"])
        self.runlog.log_scalars("trn", trn, self.samples_seen)
        self.runlog.log_scalars("val", {k: v for k, v in val.items() if "/" in k}, self.samples_seen)
        for n, image in enumerate(example_images(examples)):
            self.runlog.log_image("val", f"example_{n}/ct_prediction-red_mask-green", image, self.samples_seen)
        self.runlog.flush()
        self.runlog.append_summary({
            "epoch": epoch, "samples_seen": self.samples_seen, "seconds": round(seconds, 2),
            "train_samples_per_s": round(float(trn_totals[1]) / max(train_seconds, 1e-9), 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            **{f"trn_{k}": v for k, v in trn.items()}, **{f"val_{k}": v for k, v in val.items()}})

    def _save(self, epoch: int) -> None:
        """``last.pt`` and ``best.pt`` (the latest epoch: the cosine schedule's end is the model to use)."""
        state = make_checkpoint(
            model_name=MODEL_NAME, model_config=self.model.config, model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict(), scheduler_state=self.scheduler.state_dict(),
            epoch=epoch, samples_seen=self.samples_seen, args=self.config)
        self.saver.save(state, epoch)


def saved_run_args(run_dir: Path) -> dict:
    """The arguments a segmentation run was started with, from its ``last.pt`` (for ``--resume``).

    Raises:
        DataError: no run or no checkpoint there, or a run of another kind.
    """
    path = Path(run_dir) / LAST_NAME
    if not Path(run_dir).is_dir():
        raise DataError(f"--resume {run_dir}: no such run directory")
    if not path.is_file():
        raise DataError(f"--resume {run_dir}: no {LAST_NAME} (the run has not finished an epoch)")
    ckpt = load_checkpoint(path)
    if ckpt.get("model_name") != MODEL_NAME or not isinstance(ckpt.get("args"), dict):
        raise UsageError(f"--resume {run_dir}: not a segmentation run (its model is {ckpt.get('model_name')!r}); "
                         "resume it with luna train")
    return ckpt["args"]


def example_images(examples: list[ValidationScan]) -> list[np.ndarray]:
    """(3, H, W) pictures of the lung region of the slice through a nodule of each scan: the CT in
    grey, the model's marks (> 0.5) in red, the training mask in green (both: yellow)."""
    images = []
    for scan in examples:
        index = int(np.clip(np.rint(scan.entry.nodules_irc[0][0]), 0, scan.probability_a.shape[0] - 1))
        _, rows, cols = lung_region(scan.entry.volume)
        hu = np.asarray(scan.entry.volume.hu_a[index, rows, cols], dtype=np.float32)
        grey = np.clip((hu + 1000.0) / 1400.0, 0, 1)
        image = np.stack([grey, grey, grey])
        image[0][scan.probability_a[index, rows, cols] > 0.5] = 1.0
        image[1][np.asarray(scan.entry.mask_a[index, rows, cols]) > 0] = 1.0
        images.append(image)
    return images

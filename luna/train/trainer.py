"""The classifier trainer: setup, one epoch, its log, its checkpoint, and the loop around them.

``ClassifierTrainer(config).fit()`` is what ``luna train`` runs. The same code runs in one
process or under ``torchrun`` (DistributedDataParallel; a world of 1 is simply the default):
every process trains on its share of each epoch, and rank 0 alone writes the logs, TensorBoard,
the summary and the checkpoints.

One epoch, in order: the negatives' sampling weights (:mod:`luna.data.negatives`) -> the
epoch's shuffle -> :func:`~luna.train.engine.train_one_epoch` -> the losses back to the miner
-> :func:`~luna.train.engine.evaluate` on the held-out scans -> metrics, log lines, TensorBoard,
summary row -> ``last.pt`` (and ``best.pt``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from luna.data.cache import fill_cache
from luna.data.dataset import LunaDataset
from luna.data.negatives import HardNegativeMiner, excluded_filter
from luna.eval.metrics import GOAL_PRECISION, RECALL_AT_GOAL_KEY
from luna.luna16.paths import EXCLUDED_FILE_NAMES, LAST_NAME, VAL_PREDICTIONS_NAME, find_optional_csv
from luna.models.registry import build_model, count_parameters
from luna.runtime.checkpoint import CheckpointSaver, load_model_state, make_checkpoint
from luna.runtime.device import StepConfig, prepare_model, resolve_performance
from luna.runtime.rng import restore_rng_state
from luna.runtime.rundir import write_run_meta
from luna.runtime.distributed import (DistContext, barrier, first_occurrence_mask, gather_per_sample,
                                      seed_everything)
from luna.train.config import TrainConfig
from luna.train.engine import METRICS_LOSS_NDX, epoch_metrics, evaluate, train_one_epoch
from luna.train.recipe import build_optimizer, build_scheduler
from luna.train.resume import check_resume, load_run_checkpoint
from luna.train.session import run_names, run_session
from luna.train.runlog import RunLogger, format_epoch_lines
from luna.train.validation import ValidationScorer

log = logging.getLogger(__name__)


@dataclass
class EpochRecords:
    """What one epoch leaves: per-sample records of training and of validation (gathered)."""

    trn_t: torch.Tensor
    val_t: torch.Tensor
    val_ndx: torch.Tensor
    train_seconds: float


class ClassifierTrainer:
    """Train a candidate classifier as ``config`` says; :meth:`fit` runs the whole job."""

    def __init__(self, config: TrainConfig, app_name: str = "ClassifierTrainer"):
        self.config = config
        self.app_name = app_name
        # Checkpoints record where the data was: absolute, so that predict can tell "the
        # training data" from new scans whatever directory it runs in.
        self.config.data_dir = Path(self.config.data_dir).absolute()

    def fit(self) -> Path:
        """Train; return the run directory. Out-of-memory becomes one line with a smaller batch."""
        return run_session(self.config.device, self.config.batch_size, self._train)

    def _train(self, ctx: DistContext) -> Path:
        self.ctx = ctx
        self._setup()
        for epoch in range(self.start_epoch, self.config.epochs + 1):
            records = self._run_epoch(epoch)
            if self.ctx.is_primary:
                val_metrics = self._log_epoch(epoch, records)
                self._save(epoch, val_metrics)
        if self.ctx.is_primary:
            self.runlog.close()
            c = self.config
            picked = "the final epoch" if c.best_metric == "epoch" else \
                f"best {c.best_metric} = {self.saver.best_metric:.4f}"
            log.info("Finished: run directory %s (best.pt: %s)", self.run_dir, picked)
        return self.run_dir

    # -- setup ----------------------------------------------------------------------------------
    def _setup(self) -> None:
        c, ctx = self.config, self.ctx
        if c.resume:
            # Before any work: a resume that would change the run, or train nothing, stops here.
            self.resume_ckpt = load_run_checkpoint(c.resume)
            check_resume(c, self.resume_ckpt, c.resume)
        if ctx.is_primary:
            log.info("Starting %s, %s", self.app_name, c)
        seed_everything(c.seed, ctx.rank)
        self.perf = resolve_performance(c.precision, c.channels_last, ctx.device, c.compile)
        # Built before any work so a bad strength is reported at once, not after the cache fill.
        self.augment = c.augment()
        if ctx.device.type == "cuda":
            # Fixed input shapes: let cuDNN time its algorithms once and keep the fastest.
            torch.backends.cudnn.benchmark = True
        self.train_ds, self.val_ds = self._datasets()
        self.data_counts = data_counts(self.train_ds, self.val_ds)
        if ctx.is_primary:
            fill_cache(self.train_ds.cache, self.train_ds.series_paths, self.train_ds.series_centers, c.num_workers)
        barrier(ctx)
        self.train_loader, self.val_loader = self._loader(self.train_ds, True), self._loader(self.val_ds, False)

        self.model = build_model(c.model_config())
        # Model on the device before the optimiser is built (the optimiser keeps references).
        self.model = prepare_model(self.model, ctx.device, self.perf.channels_last)
        self.optimizer = build_optimizer(self.model, c.optimizer, c.lr, c.momentum, c.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, c.lr_schedule, c.warmup_steps,
                                         len(self.train_loader) * c.epochs)
        self.scaler = torch.amp.GradScaler(ctx.device.type) if self.perf.precision == "fp16" else None
        self.miner = HardNegativeMiner(len(self.train_ds.candidates), self.train_ds.neg_ndx, c.hard_negatives) \
            if c.hard_negatives and c.balanced else None
        tb_dir, run_name, comment = run_names(c.resume, c.runs_dir, c.tb_prefix, c.comment)
        self.run_dir = c.resume or tb_dir / f"{run_name}-{comment}"
        self.start_epoch, self.samples_seen = 1, 0
        if c.resume:
            self.start_epoch, self.samples_seen = self._restore()
        self.train_model = self.model
        if ctx.is_distributed:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if self.perf.compile:
            self.train_model = torch.compile(self.train_model)

        # Reseeded every epoch from (seed, rank, epoch): a resumed run draws what it would have.
        self.generator = torch.Generator()
        self.step_cfg = StepConfig(ctx.device, self.perf.precision, self.perf.channels_last)
        if ctx.is_primary:
            self._open_run_dir(tb_dir, run_name, comment)

    def _datasets(self) -> tuple[LunaDataset, LunaDataset]:
        c = self.config
        common = dict(val_stride=c.val_stride, split=c.split, cache_dir=c.cache_dir, candidates_csv=c.candidates,
                      annotations_csv=c.annotations, return_index=True, crop=c.crop(), crop_dtype=torch.int16,
                      holdout_series=c.holdout_series or ())
        if c.holdout_series and self.ctx.is_primary:
            log.info("Holding out %d scans (a cross-validation fold): neither trained nor validated on",
                     len(c.holdout_series))
        # With --skip-excluded, negatives inside an excluded finding are left out of training:
        # scoring ignores marks on those findings, so they would only cost the model small nodules.
        keep = excluded_filter(c.excluded or find_optional_csv(c.data_dir, EXCLUDED_FILE_NAMES)) \
            if c.skip_excluded else None
        train_ds = LunaDataset(c.data_dir, is_val=False, ratio=c.balanced, epoch_size=c.epoch_size,
                               seed=c.seed, keep=keep, **common)
        val_ds = LunaDataset(c.data_dir, is_val=True, **common)
        return train_ds, val_ds

    def _loader(self, ds: LunaDataset, shuffle: bool) -> DataLoader:
        c, ctx = self.config, self.ctx
        # The sampler is the one code path for 1..N processes: each rank sees 1/N of the data.
        sampler = DistributedSampler(ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=c.seed)
        return DataLoader(ds, batch_size=c.batch_size, sampler=sampler, num_workers=c.num_workers,
                          pin_memory=ctx.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=4 if c.num_workers else None)

    def _restore(self) -> tuple[int, int]:
        """Load the run's ``last.pt`` (read and checked by :meth:`_setup`) into the training state;
        return (next epoch, samples seen)."""
        c, ctx, ckpt = self.config, self.ctx, self.resume_ckpt
        # On the CPU: load_state_dict copies the tensors to the model's and optimiser's device.
        load_model_state(self.model, ckpt, self.run_dir / LAST_NAME, expected_name=c.model)
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        if self.scheduler is not None and ckpt.get("scheduler_state"):
            self.scheduler.load_state_dict(ckpt["scheduler_state"])
        old_lr = ckpt.get("args", {}).get("lr", c.lr)
        if old_lr != c.lr:
            # The optimiser state carries the old rate; an explicit new --lr wins from here on.
            log.info("Changing the learning rate from %g to %g", old_lr, c.lr)
            factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch) if self.scheduler is not None else 1.0
            for group in self.optimizer.param_groups:
                group["initial_lr"], group["lr"] = c.lr, c.lr * factor
            if self.scheduler is not None:
                self.scheduler.base_lrs = [c.lr for _ in self.optimizer.param_groups]
        if self.scaler is not None and ckpt.get("scaler_state"):
            self.scaler.load_state_dict(ckpt["scaler_state"])
        restore_rng_state(ckpt["rng_state"])
        if self.miner is not None and ckpt.get("negative_loss") is not None:
            self.miner.loss = ckpt["negative_loss"].numpy()
        if ctx.is_primary:
            log.info("Resuming %s after epoch %d (%d samples seen)", self.run_dir, ckpt["epoch"], ckpt["samples_seen"])
        return ckpt["epoch"] + 1, ckpt["samples_seen"]

    def _open_run_dir(self, tb_dir: Path, run_name: str, comment: str) -> None:
        """The run directory, its run.json, the TensorBoard/summary logger and the checkpoint saver."""
        c = self.config
        self.scorer = ValidationScorer(self.val_ds, c.annotations, c.excluded)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_run_meta(self.run_dir, tb_dir, run_name, comment)
        self.runlog = RunLogger(tb_dir, run_name, comment, self.run_dir, c.tb_single_writer,
                                purge_step=self.samples_seen + 1 if c.resume else None)
        if c.resume:
            self.runlog.truncate_summary(self.start_epoch - 1)
        self.saver = CheckpointSaver(self.run_dir, c.best_metric, "min" if c.best_metric == "loss/all" else "max")
        log.info("Model %s: %d parameters on %s, precision %s, channels_last %s, %d process(es)",
                 c.model, count_parameters(self.model), self.ctx.device, self.perf.precision,
                 self.perf.channels_last, self.ctx.world_size)

    # -- one epoch ------------------------------------------------------------------------------
    def _run_epoch(self, epoch: int) -> EpochRecords:
        c, ctx = self.config, self.ctx
        weights = self.miner.weights() if self.miner is not None else None
        if weights is not None:
            self.train_ds.set_negative_weights(weights)
        self.train_ds.set_epoch(epoch)
        self.train_loader.sampler.set_epoch(epoch)
        self.generator.manual_seed(int(np.random.SeedSequence([c.seed, ctx.rank, epoch]).generate_state(1)[0]))
        if ctx.is_primary:
            log.info("Epoch %d of %d: %d training and %d validation batches of %d*%d samples", epoch, c.epochs,
                     len(self.train_loader), len(self.val_loader), c.batch_size, ctx.world_size)
        start = time.monotonic()
        trn_t, trn_ndx = train_one_epoch(self.train_model, self.train_loader, self.optimizer, self.scheduler,
                                         self.scaler, self.step_cfg, epoch, self.augment, self.generator)
        trn_t = gather_per_sample(trn_t, ctx)
        trn_ndx = gather_per_sample(trn_ndx.unsqueeze(0), ctx)[0]
        if self.miner is not None:
            self.miner.update(trn_ndx.numpy(), trn_t[METRICS_LOSS_NDX].numpy())
        self.samples_seen += trn_t.shape[1]
        train_seconds = time.monotonic() - start
        val_t, val_ndx = evaluate(self.train_model, self.val_loader, self.step_cfg, epoch)
        val_t, val_ndx = _gather_unique(val_t, val_ndx, ctx)
        self._epoch_started = start
        return EpochRecords(trn_t, val_t, val_ndx, train_seconds)

    # -- logging --------------------------------------------------------------------------------
    def _log_epoch(self, epoch: int, records: EpochRecords) -> dict[str, float]:
        """Log lines, TensorBoard and the summary row of one epoch; returns the validation metrics."""
        c = self.config
        trn_metrics = epoch_metrics(records.trn_t, c.threshold)
        val_metrics = epoch_metrics(records.val_t, c.threshold)
        val_metrics.update(self.scorer.score(records.val_t, records.val_ndx, self.run_dir / VAL_PREDICTIONS_NAME))
        for mode, metrics in (("trn", trn_metrics), ("val", val_metrics)):
            for line in format_epoch_lines(epoch, mode, metrics):
                log.info(line)
        if "froc/cpm" in val_metrics:
            log.info("E%d val      %.4f CPM (sensitivity at 1/8..8 FP/scan: %s), recall %.4f at precision >= %g",
                     epoch, val_metrics["froc/cpm"],
                     " ".join(f"{val_metrics[f'froc/sens@{r:g}']:.2f}" for r in self.scorer.fp_rates),
                     val_metrics[RECALL_AT_GOAL_KEY], GOAL_PRECISION)
        self.runlog.log_epoch("trn", trn_metrics, records.trn_t, self.samples_seen)
        self.runlog.log_epoch("val", val_metrics, records.val_t, self.samples_seen)
        self.runlog.flush()
        seconds = time.monotonic() - self._epoch_started
        self.runlog.append_summary({
            "epoch": epoch, "samples_seen": self.samples_seen, "seconds": round(seconds, 2),
            "train_samples_per_s": round(records.trn_t.shape[1] / records.train_seconds, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            **{f"trn_{k}": v for k, v in trn_metrics.items()},
            **{f"val_{k}": v for k, v in val_metrics.items()}})
        return val_metrics

    # -- saving ---------------------------------------------------------------------------------
    def _save(self, epoch: int, val_metrics: dict[str, float]) -> None:
        """``last.pt``, and ``best.pt`` when the run's metric improved. After the summary and
        TensorBoard: a resume purges anything newer than the checkpoint."""
        c, miner = self.config, self.miner
        state = make_checkpoint(
            model_name=c.model, model_config=self.model.config, model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            scheduler_state=self.scheduler.state_dict() if self.scheduler else None,
            scaler_state=self.scaler.state_dict() if self.scaler else None, epoch=epoch,
            samples_seen=self.samples_seen, args=c, data=self.data_counts,
            val_metrics={key: float(value) for key, value in val_metrics.items()},
            negative_loss=torch.from_numpy(miner.loss) if miner is not None else None)
        # "epoch" ranks like any metric (higher is better), so best.pt follows the latest epoch.
        self.saver.save(state, {"epoch": epoch, **val_metrics}.get(c.best_metric, math.nan))


def data_counts(train_ds: LunaDataset, val_ds: LunaDataset) -> dict[str, int]:
    """How many scans and candidates each side of the run had, for the checkpoint (and a model card)."""
    counts = {}
    for side, ds in (("train", train_ds), ("val", val_ds)):
        counts[f"{side}_scans"] = len({c.series_uid for c in ds.candidates})
        counts[f"{side}_candidates"] = len(ds.candidates)
    return counts


def _gather_unique(metrics_t: torch.Tensor, indices: torch.Tensor,
                   ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Every validation sample exactly once: DistributedSampler pads ranks by repeating some."""
    metrics_t = gather_per_sample(metrics_t, ctx)
    indices = gather_per_sample(indices.unsqueeze(0), ctx)[0]
    keep = first_occurrence_mask(indices)
    return metrics_t[:, keep], indices[keep]

"""``luna train``: train the nodule classifier (SPEC sections 4-5, and what makes it work).

``LunaTrainingApp(argv).main()`` runs from a shell, from Python or from a notebook
(``luna.app.run("luna.training.LunaTrainingApp", "--epochs=1")``). The same code runs in one
process or under ``torchrun`` (DistributedDataParallel; world size 1 is simply the default).
Rank 0 alone writes logs, TensorBoard, the summary and checkpoints.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from luna.app import (HelpFormatter, add_common_args, add_crop_args, non_negative_float, non_negative_int,
                      positive_int, run_app, share)
from luna.cache import fill_cache
from luna.checkpoint import (CheckpointSaver, load_checkpoint, load_model_state, make_checkpoint,
                             restore_rng_state)
from luna.candidates import CandidateInfo, find_annotations_csv, find_excluded_csv
from luna.config import CropConfig
from luna.dataset import LunaDataset
from luna.distributed import (barrier, cleanup_distributed, first_occurrence_mask,
                              gather_per_sample, init_distributed, seed_everything)
from luna.engine import StepConfig, evaluate, train_one_epoch
from luna.froc import inside_findings
from luna.luna16_files import read_annotations
from luna.errors import DataError, LunaError, UsageError
from luna.metrics import (GOAL_PRECISION, METRICS_LOSS_NDX, RECALL_AT_GOAL_KEY, compute_epoch_metrics,
                          format_epoch_lines)
from luna.model import build_model, count_parameters, prepare_model
from luna.recipe import (HardNegativeMiner, add_recipe_args, augment_config, build_optimizer, build_scheduler,
                         model_config, resolve_performance)
from luna.runlog import RunLogger
from luna.sampling import mix_negative_weights, near_nodule_mask
from luna.validation import ValidationScorer

log = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="luna train", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LUNA_DATA_DIR", "data/luna16")),
                      help="LUNA16 root holding subset*/ and the CSVs ($LUNA_DATA_DIR)")
    data.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("LUNA_CACHE_DIR", "cache")),
                      help="crop cache root ($LUNA_CACHE_DIR); filled first if incomplete")
    data.add_argument("--candidates", type=Path, default=None, help="candidates CSV (default: found in the data dir)")
    data.add_argument("--annotations", type=Path, default=None, help="annotations CSV (default: found in the data dir)")
    data.add_argument("--excluded", type=Path, default=None,
                      help="annotations_excluded.csv for validation CPM (default: found in the data dir, if any)")
    data.add_argument("--skip-excluded", action=argparse.BooleanOptionalAction, default=True,
                      help="leave training candidates inside an excluded finding (annotations_excluded.csv: "
                           "neither a hit nor a false positive when scored) out of the negatives")
    data.add_argument("--near-negatives", type=share, default=0.0, metavar="FRACTION",
                      help="draw this share of the training negatives from the near misses: candidates "
                           "within --near-mm of a nodule's surface, which the rules count as false "
                           "positives although their crop shows the nodule off-centre; 0 = off")
    data.add_argument("--near-mm", type=non_negative_float, default=8.0,
                      help="how far beyond a nodule's radius a negative counts as a near miss (mm)")
    data.add_argument("--val-stride", type=positive_int, default=10,
                      help="every n-th scan (or candidate) is held out for validation")
    data.add_argument("--split", choices=("scan", "candidate"), default="scan",
                      help="hold out whole scans, or every n-th candidate as the reference did (leaks scans)")
    add_crop_args(data)
    data.add_argument("--num-workers", type=non_negative_int, default=2,
                      help="data loader worker processes (also used to fill the cache)")
    data.add_argument("--batch-size", type=positive_int, default=32, help="samples per batch and process")

    run = parser.add_argument_group("run")
    run.add_argument("--epochs", type=positive_int, default=1, help="epochs to train (in total, when resuming)")
    run.add_argument("--tb-prefix", default="luna", help="runs/<tb-prefix>/ groups runs for TensorBoard")
    run.add_argument("--runs-dir", type=Path, default=Path("runs"), help="root of TensorBoard runs and run directories")
    run.add_argument("--tb-single-writer", action="store_true",
                     help="one TensorBoard run with trn/ and val/ in the tag names, instead of two runs")
    run.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                     help="continue the run in RUN_DIR from its last.pt")
    run.add_argument("--best-metric", default="epoch",
                     choices=("epoch", "auc/roc", "froc/cpm", "auc/pr", "pr/f1_score", "loss/all"),
                     help="what picks best.pt. epoch: the latest epoch, i.e. the final weights, where the "
                          "cosine schedule has annealed to (on new scans they scored as well as or better "
                          "than picking an epoch by validation, see the README); or a validation metric: "
                          "ROC AUC ranks every held-out candidate and is the steadiest of them; froc/cpm is "
                          "LUNA16's score but rests on a few dozen nodules; F1 depends on --threshold, which "
                          "balanced sampling shifts (loss/all: lower is better)")
    run.add_argument("--seed", type=int, default=0, help="seed of sampling, augmentation and initialisation")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    run.add_argument("comment", nargs="?", default="luna", help="comment suffix for the run names")
    add_recipe_args(parser)
    return add_common_args(parser)


class LunaTrainingApp:
    """Train LunaModel on the candidates of a LUNA16-format data set."""

    def __init__(self, argv: Sequence[str] | None = None):
        self.args = get_args_parser().parse_args(argv)
        # Checkpoints record where the data was: absolute, so that predict can tell "the
        # training data" from new scans whatever directory it runs in.
        self.args.data_dir = self.args.data_dir.absolute()

    # -- setup --------------------------------------------------------------------------------
    def _datasets(self) -> tuple[LunaDataset, LunaDataset]:
        a = self.args
        common = dict(val_stride=a.val_stride, split=a.split, cache_dir=a.cache_dir,
                      candidates_csv=a.candidates, annotations_csv=a.annotations, return_index=True,
                      crop=CropConfig(edge=a.crop_edge, voxel_mm=a.crop_mm), crop_dtype=torch.int16)
        train_ds = LunaDataset(a.data_dir, is_val=False, ratio=a.balanced, epoch_size=a.epoch_size,
                               seed=a.seed, keep=self._training_filter(), **common)
        val_ds = LunaDataset(a.data_dir, is_val=True, **common)
        return train_ds, val_ds

    def _training_filter(self) -> Callable[[list[CandidateInfo]], np.ndarray] | None:
        """With --skip-excluded: a filter that drops the negatives lying inside an excluded finding.

        LUNA16 scoring ignores marks on those findings (nodules under 3 mm, findings of unknown
        size), so teaching the model that they are not nodules only costs it small nodules."""
        a = self.args
        excluded_csv = a.excluded or find_excluded_csv(a.data_dir)
        if not a.skip_excluded or excluded_csv is None:
            return None
        excluded = read_annotations(excluded_csv, "excluded annotations")

        def keep(candidates: list[CandidateInfo]) -> np.ndarray:
            inside = inside_findings([c.series_uid for c in candidates],
                                     np.array([c.center_xyz for c in candidates]), excluded)
            return ~inside | np.array([c.is_nodule for c in candidates])
        return keep

    def _near_misses(self, train_ds: LunaDataset) -> np.ndarray:
        """(negatives,) bool over ``train_ds.neg_ndx``: the near misses of --near-negatives."""
        a = self.args
        annotations_csv = a.annotations or find_annotations_csv(a.data_dir)
        if not a.near_negatives or annotations_csv is None:
            return np.zeros(len(train_ds.neg_ndx), dtype=bool)
        near = near_nodule_mask([train_ds.candidates[i] for i in train_ds.neg_ndx],
                                read_annotations(annotations_csv), a.near_mm)
        log.info("%d of %d training negatives lie within %g mm of a nodule's surface: %.0f%% of the "
                 "negatives drawn", near.sum(), len(near), a.near_mm, 100 * a.near_negatives if near.any() else 0)
        return near

    def _loader(self, ds: LunaDataset, shuffle: bool) -> DataLoader:
        ctx, a = self.ctx, self.args
        # The sampler is the one code path for 1..N processes: each rank sees 1/N of the data.
        sampler = DistributedSampler(ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle,
                                     seed=a.seed)
        return DataLoader(ds, batch_size=a.batch_size, sampler=sampler, num_workers=a.num_workers,
                          pin_memory=ctx.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=4 if a.num_workers else None)

    def _run_names(self) -> tuple[Path, str, str]:
        a = self.args
        tb_dir = a.runs_dir / a.tb_prefix
        if a.resume:
            run_dir = a.resume
            meta = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else None
            if meta is None:
                raise DataError(f"--resume {run_dir}: not a luna run directory (no run.json)")
            return Path(meta["tb_dir"]), meta["run_name"], meta["comment"]
        return tb_dir, datetime.datetime.now().strftime("%Y-%m-%d_%H.%M.%S"), a.comment

    # -- main ---------------------------------------------------------------------------------
    def main(self) -> None:
        self.ctx = init_distributed(self.args.device)
        try:
            self._train()
            # No rank tears its process group down while another is still using it: a peer
            # that leaves early can make Gloo abort the others at exit.
            barrier(self.ctx)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            # CUDA raises OutOfMemoryError; the CPU allocator a RuntimeError ("can't allocate").
            if not isinstance(exc, torch.OutOfMemoryError) and "allocate" not in str(exc) \
                    and "out of memory" not in str(exc):
                raise
            size = self.args.batch_size
            raise LunaError(f"out of memory on {self.ctx.device} at --batch-size {size}; "
                            f"try a smaller one, e.g. --batch-size {max(size // 2, 1)}") from exc
        finally:
            cleanup_distributed()

    def _train(self) -> None:
        a, ctx = self.args, self.ctx
        if ctx.is_primary:
            log.info("Starting %s, %s", type(self).__name__, a)
        seed_everything(a.seed, ctx.rank)
        perf = resolve_performance(a, ctx.device)
        # Built before any work so a bad strength is reported at once, not after the cache fill.
        augment = augment_config(a)
        if ctx.device.type == "cuda":
            # Fixed input shapes: let cuDNN time its algorithms once and keep the fastest.
            torch.backends.cudnn.benchmark = True
        train_ds, val_ds = self._datasets()
        if ctx.is_primary:
            fill_cache(train_ds.cache, train_ds.series_paths, train_ds.series_centers, a.num_workers)
        barrier(ctx)
        train_loader, val_loader = self._loader(train_ds, True), self._loader(val_ds, False)

        model = build_model(model_config(a))
        # Model on the device before the optimiser is built (the optimiser keeps references).
        model = prepare_model(model, ctx.device, perf.channels_last)
        optimizer = build_optimizer(model, a)
        scheduler = build_scheduler(optimizer, a, len(train_loader) * a.epochs)
        scaler = torch.amp.GradScaler(ctx.device.type) if perf.precision == "fp16" else None
        start_epoch, samples_seen = 1, 0
        miner = HardNegativeMiner(len(train_ds.candidates), train_ds.neg_ndx, a.hard_negatives) \
            if a.hard_negatives and a.balanced else None
        tb_dir, run_name, comment = self._run_names()
        run_dir = a.resume or tb_dir / f"{run_name}-{comment}"
        if a.resume:
            start_epoch, samples_seen = self._restore(run_dir, model, optimizer, scheduler, scaler, miner)
        train_model = model
        if ctx.is_distributed:
            train_model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        if perf.compile:
            train_model = torch.compile(train_model)

        # Reseeded every epoch from (seed, rank, epoch): a resumed run draws what it would have.
        generator = torch.Generator()
        step_cfg = StepConfig(ctx.device, perf.precision, perf.channels_last, augment)
        scorer = ValidationScorer(val_ds, a.annotations, a.excluded) if ctx.is_primary else None
        runlog = saver = None
        if ctx.is_primary:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "run.json").write_text(json.dumps(
                {"tb_dir": str(tb_dir), "run_name": run_name, "comment": comment}, indent=1))
            runlog = RunLogger(tb_dir, run_name, comment, run_dir, a.tb_single_writer,
                               purge_step=samples_seen + 1 if a.resume else None)
            if a.resume:
                runlog.truncate_summary(start_epoch - 1)
            saver = CheckpointSaver(run_dir, a.best_metric, "min" if a.best_metric == "loss/all" else "max")
            log.info("Model %s: %d parameters on %s, precision %s, channels_last %s, %d process(es)",
                     a.model, count_parameters(model), ctx.device, perf.precision, perf.channels_last,
                     ctx.world_size)

        near = self._near_misses(train_ds)
        for epoch in range(start_epoch, a.epochs + 1):
            weights = mix_negative_weights(miner.weights() if miner is not None else None, near, a.near_negatives)
            if weights is not None:
                train_ds.set_negative_weights(weights)
            train_ds.set_epoch(epoch)
            train_loader.sampler.set_epoch(epoch)
            generator.manual_seed(int(np.random.SeedSequence([a.seed, ctx.rank, epoch]).generate_state(1)[0]))
            if ctx.is_primary:
                log.info("Epoch %d of %d, %d/%d batches of size %d*%d", epoch, a.epochs, len(train_loader),
                         len(val_loader), a.batch_size, ctx.world_size)
            start = time.monotonic()
            trn_t, trn_ndx = train_one_epoch(train_model, train_loader, optimizer, scheduler, scaler,
                                             step_cfg, epoch, generator)
            trn_t = gather_per_sample(trn_t, ctx)
            trn_ndx = gather_per_sample(trn_ndx.unsqueeze(0), ctx)[0]
            if miner is not None:
                miner.update(trn_ndx.numpy(), trn_t[METRICS_LOSS_NDX].numpy())
            samples_seen += trn_t.shape[1]
            train_seconds = time.monotonic() - start
            val_t, val_ndx = evaluate(train_model, val_loader, step_cfg, epoch)
            val_t, val_ndx = self._gather_unique(val_t, val_ndx)
            if not ctx.is_primary:
                continue
            trn_metrics = compute_epoch_metrics(trn_t, a.threshold)
            val_metrics = compute_epoch_metrics(val_t, a.threshold)
            val_metrics.update(scorer.score(val_t, val_ndx, run_dir / "val_predictions.csv"))
            for mode, metrics in (("trn", trn_metrics), ("val", val_metrics)):
                for line in format_epoch_lines(epoch, mode, metrics):
                    log.info(line)
            if "froc/cpm" in val_metrics:
                log.info("E%d val      %.4f CPM (sensitivity at 1/8..8 FP/scan: %s), recall %.4f at precision >= %g",
                         epoch, val_metrics["froc/cpm"],
                         " ".join(f"{val_metrics[f'froc/sens@{r:g}']:.2f}" for r in scorer.fp_rates),
                         val_metrics[RECALL_AT_GOAL_KEY], GOAL_PRECISION)
            runlog.log_epoch("trn", trn_metrics, trn_t, samples_seen)
            runlog.log_epoch("val", val_metrics, val_t, samples_seen)
            runlog.flush()
            seconds = time.monotonic() - start
            runlog.append_summary({"epoch": epoch, "samples_seen": samples_seen, "seconds": round(seconds, 2),
                                   "train_samples_per_s": round(trn_t.shape[1] / train_seconds, 1),
                                   "lr": optimizer.param_groups[0]["lr"],
                                   **{f"trn_{k}": v for k, v in trn_metrics.items()},
                                   **{f"val_{k}": v for k, v in val_metrics.items()}})
            # Checkpoint after the summary and TensorBoard: a resume purges anything newer than it.
            state = make_checkpoint(model_name=a.model, model_config=model.config, model_state=model.state_dict(),
                                    optimizer_state=optimizer.state_dict(),
                                    scheduler_state=scheduler.state_dict() if scheduler else None,
                                    scaler_state=scaler.state_dict() if scaler else None, epoch=epoch,
                                    samples_seen=samples_seen, args=a,
                                    negative_loss=torch.from_numpy(miner.loss) if miner is not None else None)
            # "epoch" ranks like any metric (higher is better), so best.pt follows the latest epoch.
            saver.save(state, {"epoch": epoch, **val_metrics}.get(a.best_metric, math.nan))
        if runlog is not None:
            runlog.close()
            picked = "the final epoch" if a.best_metric == "epoch" else f"best {a.best_metric} = {saver.best_metric:.4f}"
            log.info("Finished: run directory %s (best.pt: %s)", run_dir, picked)

    def _restore(self, run_dir: Path, model, optimizer, scheduler, scaler, miner) -> tuple[int, int]:
        """Load ``run_dir/last.pt`` into the training state; return (next epoch, samples seen)."""
        a, ctx = self.args, self.ctx
        ckpt = load_checkpoint(run_dir / "last.pt", map_location=ctx.device)
        # The model name is checked here rather than by load_model_state so that the error names
        # the flag to pass: a run from before luna_centre became the default resumes only with
        # its own --model.
        trained = ckpt.get("model_name")
        if trained != a.model:
            raise UsageError(f"--resume {run_dir}: the run trained --model {trained}; pass --model {trained}")
        load_model_state(model, ckpt, run_dir / "last.pt")
        used = ckpt.get("args", {}).get("optimizer", a.optimizer)
        if used != a.optimizer:
            raise UsageError(f"--resume {run_dir}: the run used --optimizer {used}, not {a.optimizer}")
        optimizer.load_state_dict(ckpt["optimizer_state"])
        if scheduler is not None and ckpt.get("scheduler_state"):
            scheduler.load_state_dict(ckpt["scheduler_state"])
        old_lr = ckpt.get("args", {}).get("lr", a.lr)
        if old_lr != a.lr:
            # The optimiser state carries the old rate; an explicit new --lr wins from here on.
            log.info("Changing the learning rate from %g to %g", old_lr, a.lr)
            factor = scheduler.lr_lambdas[0](scheduler.last_epoch) if scheduler is not None else 1.0
            for group in optimizer.param_groups:
                group["initial_lr"], group["lr"] = a.lr, a.lr * factor
            if scheduler is not None:
                scheduler.base_lrs = [a.lr for _ in optimizer.param_groups]
        if scaler is not None and ckpt.get("scaler_state"):
            scaler.load_state_dict(ckpt["scaler_state"])
        restore_rng_state(ckpt["rng_state"])
        if miner is not None and ckpt.get("negative_loss") is not None:
            miner.loss = ckpt["negative_loss"].numpy()
        if ctx.is_primary:
            log.info("Resuming %s after epoch %d (%d samples seen)", run_dir, ckpt["epoch"], ckpt["samples_seen"])
        return ckpt["epoch"] + 1, ckpt["samples_seen"]

    def _gather_unique(self, metrics_t: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every validation sample exactly once: DistributedSampler pads ranks by repeating some."""
        metrics_t = gather_per_sample(metrics_t, self.ctx)
        indices = gather_per_sample(indices.unsqueeze(0), self.ctx)[0]
        keep = first_occurrence_mask(indices)
        return metrics_t[:, keep], indices[keep]


if __name__ == "__main__":
    sys.exit(run_app(LunaTrainingApp, prog="luna train"))

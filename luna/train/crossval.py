"""Cross-validation by subset, the LUNA16 protocol: fold k holds out the scans of its subsets
(subset s goes to fold s mod n), trains on the others, scores its held-out scans; the folds'
results files are then pooled into one FROC/CPM over every scan (docs/luna16.md).

An output directory holds::

    crossval.json           the folds: their subsets and scans (a rerun must agree with it)
    fold<k>/runs/<run>/     fold k's training run (checkpoints, summary, TensorBoard)
    fold<k>/predictions.csv its held-out scans scored; written last and atomically, so it marks
                            the fold finished: a rerun skips the fold
    metrics.json, *.png     the pooled evaluation, with the per-fold table and the folds pooled

A fold's run records its held-out scans (``TrainConfig.holdout_series``), so ``luna predict
--split val`` of that run scores exactly them. A fold whose run finished training but not
scoring is only scored again; one whose run stopped mid-way is resumed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from luna.atomic import write_text_atomic
from luna.errors import DataError, UsageError
from luna.eval.evaluation import Evaluation, evaluate, read_pooled_findings, read_pooled_predictions
from luna.eval.suppression import NMS_RADIUS_MM
from luna.infer.predict import PredictConfig, predict
from luna.io.scans import series_subsets
from luna.luna16.candidates import LUNA16_SUBSETS, assign_folds, fold_of_subset
from luna.luna16.paths import (ANNOTATION_FILE_NAMES, CROSSVAL_PLAN_NAME, EXCLUDED_FILE_NAMES, FOLD_RESULTS_NAME,
                               FOLD_RUNS_NAME, LAST_NAME, RUN_META_NAME, find_csv, find_optional_csv,
                               fold_dir_name)
from luna.report.evaluation_files import write_evaluation
from luna.runtime.checkpoint import load_checkpoint
from luna.runtime.distributed import launched_world
from luna.train.config import TrainConfig
from luna.train.trainer import ClassifierTrainer

log = logging.getLogger(__name__)


@dataclass
class CrossvalConfig:
    """What ``luna crossval`` is told: a training run's settings plus the folds'."""

    train: TrainConfig
    out_dir: Path
    folds: int | None = None  # None: the existing plan's count, else LUNA16_SUBSETS
    fold: int | None = None  # run this fold only
    pool_only: bool = False
    tta_views: int = 8
    nms_mm: float = NMS_RADIUS_MM
    bootstraps: int = 1000


@dataclass(frozen=True)
class FoldPlan:
    """Which subsets and scans each fold holds out."""

    data_dir: str
    subsets: list[list[int]]
    series: list[list[str]]

    @property
    def n_folds(self) -> int:
        return len(self.series)


def plan_folds(data_dir: Path, n_folds: int) -> FoldPlan:
    """The folds of the scans under ``data_dir``, by the ``subsetK`` folder each lies in."""
    subset_of = series_subsets(data_dir)
    series = assign_folds(subset_of, n_folds)
    subsets = [sorted({s for s in subset_of.values() if fold_of_subset(s, n_folds) == k}) for k in range(n_folds)]
    return FoldPlan(str(Path(data_dir).absolute()), subsets, series)


def read_plan(out_dir: Path) -> FoldPlan | None:
    path = Path(out_dir) / CROSSVAL_PLAN_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return FoldPlan(str(data["data_dir"]), [list(s) for s in data["subsets"]], [list(s) for s in data["series"]])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a luna cross-validation plan ({exc})") from None


def resolve_plan(config: CrossvalConfig) -> tuple[FoldPlan, bool]:
    """The folds to work on and whether they are new (to be written): the out dir's plan, which a
    rerun's flags and scans must agree with, or a new one."""
    stored = read_plan(config.out_dir)
    if stored is not None and config.folds not in (None, stored.n_folds):
        raise UsageError(f"{config.out_dir} holds a {stored.n_folds}-fold cross-validation, not --folds "
                         f"{config.folds}; use another --out-dir")
    if config.pool_only:
        if stored is None:
            raise DataError(f"{config.out_dir}: no {CROSSVAL_PLAN_NAME}, so no cross-validation to pool; "
                            "run luna crossval without --pool-only first")
        return stored, False
    plan = plan_folds(config.train.data_dir, config.folds or (stored.n_folds if stored else LUNA16_SUBSETS))
    if stored is not None and stored.series != plan.series:
        raise UsageError(f"{config.out_dir} holds folds of other scans than {config.train.data_dir} has now "
                         f"(see {CROSSVAL_PLAN_NAME}); use another --out-dir")
    return plan, stored is None


def results_path(out_dir: Path, fold: int) -> Path:
    return Path(out_dir) / fold_dir_name(fold) / FOLD_RESULTS_NAME


def latest_run(out_dir: Path, fold: int) -> Path | None:
    """The fold's newest training run directory (run names start with their date), if any."""
    runs = sorted(p for p in (Path(out_dir) / fold_dir_name(fold) / FOLD_RUNS_NAME).glob("*")
                  if (p / RUN_META_NAME).is_file())
    return runs[-1] if runs else None


def run_crossval(config: CrossvalConfig) -> Pooled | None:
    """Run the folds not yet finished (or ``config.fold`` only), then pool them once all are.

    Returns:
        The pooled evaluation; None when folds are still missing, or on a torchrun rank > 0.

    Raises:
        UsageError: several folds in one torchrun launch, a fold number out of range, or an out
            dir holding another cross-validation.
    """
    rank, world_size = launched_world()
    if world_size > 1 and config.fold is None and not config.pool_only:
        raise UsageError("under torchrun, train one fold per launch: add --fold K (the last fold to finish "
                         "pools them all, as does --pool-only)")
    plan, is_new = resolve_plan(config)
    if config.fold is not None and not 0 <= config.fold < plan.n_folds:
        raise UsageError(f"--fold {config.fold}: the folds are 0 .. {plan.n_folds - 1}")
    if is_new and rank == 0:
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(config.out_dir) / CROSSVAL_PLAN_NAME,
                          json.dumps(dataclasses.asdict(plan), indent=1) + "\n")
    if not config.pool_only:
        for fold in [config.fold] if config.fold is not None else range(plan.n_folds):
            run_fold(config, plan, fold)
    if rank != 0:
        return None
    missing = [k for k in range(plan.n_folds) if not results_path(config.out_dir, k).is_file()]
    if missing and not config.pool_only:
        log.info("Not finished yet: fold(s) %s; the last fold to finish pools them all (--pool-only pools what "
                 "is there)", ", ".join(map(str, missing)))
        return None
    return pool_folds(config, plan)


def run_fold(config: CrossvalConfig, plan: FoldPlan, fold: int) -> None:
    """Train fold ``fold`` on the other folds' scans (resuming a run that stopped) and score its
    held-out scans into its results file; a fold with a results file is left as it is."""
    results = results_path(config.out_dir, fold)
    is_primary = launched_world()[0] == 0  # under torchrun, rank 0 logs and scores
    if results.is_file():
        if is_primary:
            log.info("Fold %d of %d is finished (%s): skipped", fold, plan.n_folds, results)
        return
    held_out = plan.series[fold]
    train = dataclasses.replace(config.train, holdout_series=list(held_out), resume=None,
                                runs_dir=Path(config.out_dir) / fold_dir_name(fold), tb_prefix=FOLD_RUNS_NAME,
                                comment=f"{config.train.comment}-{fold_dir_name(fold)}")
    run_dir = latest_run(config.out_dir, fold)
    trained = load_checkpoint(run_dir / LAST_NAME)["epoch"] if run_dir and (run_dir / LAST_NAME).is_file() else 0
    if is_primary:
        log.info("Fold %d of %d: holding out %d scans of subset(s) %s", fold, plan.n_folds, len(held_out),
                 ", ".join(map(str, plan.subsets[fold])))
    if trained >= train.epochs:
        if is_primary:
            log.info("Fold %d: %s has trained %d epochs already; scoring it", fold, run_dir, trained)
    else:
        if trained:
            train.resume = run_dir
        run_dir = ClassifierTrainer(train, "LunaCrossvalApp").fit()
    if not is_primary:
        return
    c = config.train
    predict(PredictConfig(checkpoint=run_dir, data_dir=c.data_dir, candidates=c.candidates,
                          annotations=c.annotations, split="val", out=results, tta_views=config.tta_views,
                          nms_mm=config.nms_mm, device=c.device, precision=c.precision,
                          channels_last=c.channels_last), share_out=False)


@dataclass
class Pooled:
    """The pooled evaluation of the finished folds and each fold's own figures."""

    evaluation: Evaluation
    per_fold: list[dict[str, Any]]
    pooled_folds: list[int]
    missing_folds: list[int]
    metrics_path: Path
    figures: list[Path]


def pool_folds(config: CrossvalConfig, plan: FoldPlan) -> Pooled:
    """Score the finished folds' results files as one set over all their scans (a scan without
    candidates counts its nodules as missed), and each fold alone; write ``metrics.json`` and the
    figures into the out dir.

    Raises:
        DataError: no fold finished, no annotations, or no nodule in the pooled scans.
    """
    out_dir, c = Path(config.out_dir), config.train
    pooled = [k for k in range(plan.n_folds) if results_path(out_dir, k).is_file()]
    missing = [k for k in range(plan.n_folds) if k not in pooled]
    if not pooled:
        raise DataError(f"{out_dir}: no fold is finished (no {fold_dir_name(0)}/{FOLD_RESULTS_NAME} ...); "
                        "run luna crossval without --pool-only first")
    if missing:
        log.warning("Pooling folds %s only: fold(s) %s are not finished (no %s)", ", ".join(map(str, pooled)),
                    ", ".join(map(str, missing)), FOLD_RESULTS_NAME)
    data_dir = Path(plan.data_dir)
    annotations_csv = c.annotations or find_csv(data_dir, ANNOTATION_FILE_NAMES, "annotations", "--annotations")
    excluded_csv = c.excluded or find_optional_csv(data_dir, EXCLUDED_FILE_NAMES)
    annotations = read_pooled_findings([annotations_csv])
    excluded = read_pooled_findings([excluded_csv], "excluded findings") if excluded_csv else None
    paths = [results_path(out_dir, k) for k in pooled]
    series_list = sorted(uid for k in pooled for uid in plan.series[k])
    evaluation = evaluate(read_pooled_predictions(paths), annotations, excluded, series_list,
                          threshold=c.threshold, n_bootstraps=config.bootstraps, seed=0)
    if evaluation.froc.n_nodules == 0:
        raise DataError(f"{annotations_csv}: no nodule in the {evaluation.froc.n_scans} scans of folds "
                        f"{', '.join(map(str, pooled))}, so sensitivity and CPM are undefined")
    per_fold = [fold_row(out_dir, plan, k, evaluate(read_pooled_predictions([results_path(out_dir, k)]), annotations,
                                                     excluded, sorted(plan.series[k]), threshold=c.threshold,
                                                     n_bootstraps=0))
                for k in pooled]
    inputs = {"data_dir": plan.data_dir, "annotations": str(annotations_csv),
              "excluded": str(excluded_csv) if excluded_csv else None,
              "predictions": [str(path.relative_to(out_dir)) for path in paths],
              "threshold": c.threshold, "bootstraps": config.bootstraps, "seed": 0}
    extra = {"crossval": {"folds": plan.n_folds, "pooled_folds": pooled, "missing_folds": missing,
                          "fold_subsets": plan.subsets, "per_fold": per_fold}}
    metrics_path, figures = write_evaluation(evaluation, out_dir, inputs, extra)
    return Pooled(evaluation, per_fold, pooled, missing, metrics_path, figures)


def fold_row(out_dir: Path, plan: FoldPlan, fold: int, evaluation: Evaluation) -> dict[str, Any]:
    """One fold's line of the per-fold table (figures without intervals; null where undefined)."""
    froc = evaluation.to_dict()["froc"]
    run_dir = latest_run(out_dir, fold)
    return {"fold": fold, "subsets": plan.subsets[fold], "n_scans": froc["n_scans"], "n_nodules": froc["n_nodules"],
            "n_found": froc["n_found"], "n_candidates": froc["n_candidates"], "cpm": froc["cpm"],
            "sensitivity_at": froc["sensitivity_at"],
            "results": str(results_path(out_dir, fold).relative_to(out_dir)),
            "run_dir": str(run_dir.relative_to(out_dir)) if run_dir else None}


def format_fold_table(pooled: Pooled) -> str:
    """The per-fold table and the pooled line, as ``luna crossval`` prints them."""
    def number(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.3f}"

    rates = list(pooled.per_fold[0]["sensitivity_at"]) if pooled.per_fold else []
    header = f"{'fold':>4}  {'subsets':<10}{'scans':>6}{'nodules':>8}   {'CPM':>6}  " + \
        "  ".join(f"{'@' + format(float(r), 'g'):>6}" for r in rates)
    lines = [header]
    for row in pooled.per_fold:
        lines.append(f"{row['fold']:>4}  {','.join(map(str, row['subsets'])):<10}{row['n_scans']:>6}"
                     f"{row['n_nodules']:>8}   {number(row['cpm'])}  "
                     + "  ".join(number(row["sensitivity_at"][r]) for r in rates))
    froc = pooled.evaluation.froc
    lines.append(f"{'all':>4}  {'pooled':<10}{froc.n_scans:>6}{froc.n_nodules:>8}   {number(froc.cpm)}  "
                 + "  ".join(number(froc.sensitivity_at[float(r)]) for r in rates))
    if pooled.missing_folds:
        lines.append(f"not pooled (unfinished): fold(s) {', '.join(map(str, pooled.missing_folds))}")
    return "\n".join(lines)

"""`luna predict` against the reference model's inference rate, with the CPM each setting gives.

Side by side in one run, on the same scans, each a real `luna predict` (reading the scans
included) of one process:

1. the reference: LunaModel (fresh weights: its speed does not depend on them) at one view in
   float32, default memory format, no suppression: the rate the others are divided by;
2. luna's defaults on the trained checkpoint given: all 8 views for the best ``--tta-top`` (100)
   candidates of each scan by one view, bf16 + channels-last, suppression;
3. the same with all 8 views for every candidate (``--tta-top 0``, the default before);
4. the trained model at one view.

Each trained setting is scored by the LUNA16 rules on the same scans (bootstrap interval too),
so a speed-up is seen not to cost quality.

    .venv/bin/python benchmarks/bench_predict.py --checkpoint runs/luna/<run> --data-dir data/synth \\
        [--split val] [--scans 8]           # ~10 min on 2 cores; writes results/bench_predict.txt
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_report import Report, load_average  # noqa: E402

from luna.eval.evaluation import evaluate, read_pooled_findings, read_pooled_predictions  # noqa: E402
from luna.infer.predict import PredictConfig, predict, select_jobs  # noqa: E402
from luna.luna16.paths import find_optional_csv  # noqa: E402
from luna.models.registry import build_model  # noqa: E402
from luna.runtime.checkpoint import (load_checkpoint, make_checkpoint, resolve_checkpoint_path,  # noqa: E402
                                     save_checkpoint)


def reference_checkpoint(trained: Path, out: Path) -> Path:
    """The trained run's checkpoint with the reference LunaModel (fresh weights) in its place."""
    ckpt = load_checkpoint(trained)
    model = build_model({"name": "luna"})
    save_checkpoint(out, make_checkpoint(model_state=model.state_dict(), model_config=model.config,
                                         model_name="luna", args=ckpt.get("args", {}), epoch=0))
    return out


def timed_predict(config: PredictConfig) -> tuple[float, int]:
    """Seconds of one `luna predict` and the rows it wrote."""
    started = time.perf_counter()
    out = predict(config)
    seconds = time.perf_counter() - started
    return seconds, sum(1 for _ in open(out)) - 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a luna train run or checkpoint")
    parser.add_argument("--data-dir", type=Path, required=True, help="the scans to score")
    parser.add_argument("--split", default=None, help="as luna predict's --split (default: its default)")
    parser.add_argument("--scans", type=int, default=0, help="score only the first N scans of the split (0: all)")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: results/bench_predict.txt)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    report = Report("bench_predict", args.out)
    trained = resolve_checkpoint_path(args.checkpoint)
    annotations = find_optional_csv(args.data_dir, ("annotations.csv",))
    excluded = find_optional_csv(args.data_dir, ("annotations_excluded.csv",))
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        reference = reference_checkpoint(trained, Path(tmp, "reference.pt"))
        base = dict(data_dir=args.data_dir, split=args.split)
        settings = {
            "reference: LunaModel, 1 view, fp32": PredictConfig(
                checkpoint=reference, tta_views=1, tta_top=0, nms_mm=0, precision="fp32", channels_last="off", **base),
            "luna defaults (8 views for the best 100)": PredictConfig(checkpoint=trained, **base),
            "8 views for every candidate (--tta-top 0)": PredictConfig(checkpoint=trained, tta_top=0, **base),
            "1 view (--tta-views 1)": PredictConfig(checkpoint=trained, tta_views=1, **base),
        }
        if args.scans:
            jobs = select_jobs(PredictConfig(checkpoint=trained, **base), load_checkpoint(trained).get("args", {})).jobs
            series = sorted(job.series_uid for job in jobs)
            for config in settings.values():
                config.series = series[:args.scans]
        report.say(f"checkpoint: {trained}; scans: {args.data_dir} ({args.split or 'default'} split"
                   f"{f', first {args.scans}' if args.scans else ''})")
        report.say()
        report.say(f"{'setting':<44} {'cand/s':>7} {'x ref':>6} {'s':>7}  CPM [95%]               load")
        rates: dict[str, float] = {}
        for name, config in settings.items():
            config.out = Path(tmp, f"{len(rates)}.csv")
            seconds, rows = timed_predict(config)
            rates[name] = rows / seconds
            cpm = "-"
            if config.checkpoint == trained and annotations:
                result = evaluate(read_pooled_predictions([config.out]), read_pooled_findings([annotations]),
                                  read_pooled_findings([excluded], "excluded findings") if excluded else None,
                                  series_list=None).froc
                cpm = f"{result.cpm:.3f} [{result.ci.cpm[0]:.3f}, {result.ci.cpm[1]:.3f}]"
            ratio = rates[name] / next(iter(rates.values()))
            report.say(f"{name:<44} {rates[name]:7.1f} {ratio:6.2f} {seconds:7.1f}  {cpm:<24} {load_average()}")
            report.progress(name)
    report.say()
    report.say("goal: luna's defaults >= 1x the reference's one-view fp32 candidates/s, reading scans included")
    report.write()


if __name__ == "__main__":
    main()

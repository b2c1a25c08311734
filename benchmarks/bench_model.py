"""Model compute alone: training steps and inference per second, architecture by architecture.

The network is where a CPU training run spends its time (the loader delivers hundreds of times
more, see bench_cache.py), so its speed decides how many samples fit in a time budget. Side by
side in one run, on the same random HU batches, batch 32, one 32x48x48 crop per sample:

- the reference: LunaModel in float32, default memory format;
- LunaModel with the speed settings luna picks on this CPU (channels_last_3d, and bf16 autocast
  where oneDNN has bf16 kernels, i.e. AVX-512 or newer; fp32 on AVX2-only CPUs);
- luna_bn with a BatchNorm after every convolution (``batch_norm_from=1``);
- luna_bn as shipped (BatchNorm from block 2 on; block 1 keeps the reference's convolutions);
- luna_centre, the previous default (luna_bn plus a branch of 16/32/64 channels on the crop's
  central 16x24x24);
- luna_twoscale, the default (luna_centre's branch, and a trunk of 16/32/64 channels on the whole
  crop averaged to 16x24x24);
- luna_twoscale in the precision luna does *not* pick here (fp32 where it picks bf16, and the
  other way round), timed on fewer batches: the ratio that justifies the pick on this CPU.

A training step is forward, float32 cross-entropy, backward and an AdamW step; inference is a
forward pass under ``no_grad`` in eval mode. Also timed: the default augmentation of one batch
(``luna.train.augment.augment_batch``) and its affine sampling grid built two ways, with
``torch.nn.functional.affine_grid`` and with luna's broadcasting ``sampling_grid``. Rounds are taken in turn across the cases, so that
bursts of other load on a shared machine hit them alike, and each case keeps its best round.

    .venv/bin/python benchmarks/bench_model.py            # ~3 min, writes results/bench_model.txt
    .venv/bin/python benchmarks/bench_model.py --quick    # ~20 s smoke run
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench_report import Report, load_average  # noqa: E402
from luna.train.augment import AugmentConfig, augment_batch, build_theta, draw_params, sampling_grid  # noqa: E402
from luna.models.registry import build_model, count_parameters  # noqa: E402
from luna.runtime.device import StepConfig, prepare_model, resolve_performance  # noqa: E402

BATCH_SIZE = 32


@dataclass
class Case:
    label: str
    model_config: dict
    precision: str
    channels_last: bool
    step_share: float = 1.0  # of --steps timed per round (a slow case need not take minutes)


# What `--precision auto` picks on this CPU, and the other one.
AUTO = resolve_performance("auto", "auto", torch.device("cpu")).precision
OTHER = "fp32" if AUTO == "bf16" else "bf16"
CASES = [
    Case("luna, fp32, default memory (reference)", {"name": "luna"}, "fp32", False),
    Case(f"luna, {AUTO} + channels-last", {"name": "luna"}, AUTO, True),
    Case("luna_bn, norm in every block", {"name": "luna_bn", "batch_norm_from": 1}, AUTO, True),
    Case("luna_bn, norm from block 2", {"name": "luna_bn"}, AUTO, True),
    Case("luna_centre", {"name": "luna_centre"}, AUTO, True),
    Case(f"luna_twoscale (default), {AUTO}", {"name": "luna_twoscale"}, AUTO, True),
    Case(f"luna_twoscale, {OTHER} (not picked)", {"name": "luna_twoscale"}, OTHER, True, step_share=0.25),
]


class Runner:
    """One case's model, optimiser and batch, ready to time."""

    def __init__(self, case: Case, batch: torch.Tensor, labels: torch.Tensor) -> None:
        self.cfg = StepConfig(torch.device("cpu"), case.precision, case.channels_last)
        torch.manual_seed(0)
        model = build_model(case.model_config)
        self.parameters = count_parameters(model)
        self.model = prepare_model(model, self.cfg.device, case.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.batch = self.cfg.to_device(batch)
        self.labels = labels

    def train_steps(self, steps: int) -> float:
        """Seconds for ``steps`` training steps."""
        self.model.train()
        started = time.perf_counter()
        for _ in range(steps):
            with self.cfg.autocast():
                logits, _ = self.model(self.batch)
            loss = F.cross_entropy(logits.float(), self.labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return time.perf_counter() - started

    def eval_steps(self, steps: int) -> float:
        """Seconds for ``steps`` inference batches."""
        self.model.eval()
        started = time.perf_counter()
        with torch.no_grad():
            for _ in range(steps):
                with self.cfg.autocast():
                    self.model(self.batch)
        return time.perf_counter() - started


def best_ms(work, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``work()`` (after one warm-up), in milliseconds."""
    work()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds across all cases (default 3, quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed batches per case and round (default 8, quick 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default benchmarks/results/bench_model[_quick].txt)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (2 if args.quick else 8)
    report = Report("bench_model_quick" if args.quick else "bench_model", args.out)

    generator = torch.Generator().manual_seed(0)
    # HU-like values: lung (-850) with noise and some soft tissue, clipped as the cache clips.
    batch = (torch.randn(BATCH_SIZE, 1, 32, 48, 48, generator=generator) * 400 - 500).clamp(-1000, 1000)
    labels = torch.randint(0, 2, (BATCH_SIZE,), generator=generator)
    runners = [Runner(case, batch, labels) for case in CASES]
    for runner in runners:  # warm-up: first calls pick kernels and allocate
        runner.train_steps(1)
        runner.eval_steps(1)

    case_steps = [max(1, round(steps * case.step_share)) for case in CASES]
    best_train = [float("inf")] * len(CASES)
    best_eval = [float("inf")] * len(CASES)
    for _ in range(rounds):
        for k, runner in enumerate(runners):
            best_train[k] = min(best_train[k], runner.train_steps(case_steps[k]))
            best_eval[k] = min(best_eval[k], runner.eval_steps(case_steps[k]))

    train_rate = [n * BATCH_SIZE / s for n, s in zip(case_steps, best_train)]
    eval_rate = [n * BATCH_SIZE / s for n, s in zip(case_steps, best_eval)]
    report.say(f"\nbatch {BATCH_SIZE}, best of {rounds} rounds x {steps} batches per case "
               f"({case_steps[-1]} for the last); CPU capability {torch.backends.cpu.get_cpu_capability()}, "
               f"--precision auto picks {AUTO}; load average at end: {load_average()}")
    report.say(f"{'case':<40} {'params':>8} {'train/s':>8} {'x ref':>6} {'infer/s':>8} {'x ref':>6}")
    for case, runner, train, infer in zip(CASES, runners, train_rate, eval_rate):
        report.say(f"{case.label:<40} {runner.parameters:>8,} {train:>8.1f} {train / train_rate[0]:>6.2f} "
                   f"{infer:>8.1f} {infer / eval_rate[0]:>6.2f}")
    every, default = train_rate[2], train_rate[3]
    report.say(f"\nluna_bn training, norm from block 2 vs in every block: {default / every:.2f}x")
    report.say(f"time of a training step against luna_bn: luna_centre {default / train_rate[4]:.2f}x, "
               f"luna_twoscale {default / train_rate[5]:.2f}x; of inference: {eval_rate[3] / eval_rate[4]:.2f}x, "
               f"{eval_rate[3] / eval_rate[5]:.2f}x")
    report.say(f"the default against the previous one (luna_twoscale / luna_centre): training "
               f"{train_rate[5] / train_rate[4]:.2f}x, inference {eval_rate[5] / eval_rate[4]:.2f}x")
    report.say(f"luna_twoscale in {AUTO} (picked) against {OTHER}: training {train_rate[5] / train_rate[6]:.2f}x, "
               f"inference {eval_rate[5] / eval_rate[6]:.2f}x")

    # Augmentation, as training applies it: on the float32 channels-last batch, default strengths.
    x = runners[3].batch
    config = AugmentConfig()
    theta = build_theta(draw_params(BATCH_SIZE, config, generator), x.shape[2:])
    aug_ms = best_ms(lambda: augment_batch(x, config, generator), rounds * steps)
    torch_grid_ms = best_ms(lambda: F.affine_grid(theta, list(x.shape), align_corners=False), rounds * steps)
    our_grid_ms = best_ms(lambda: sampling_grid(theta, x.shape), rounds * steps)
    step_ms = BATCH_SIZE / default * 1000
    report.say(f"augmentation of a batch: {aug_ms:.1f} ms ({aug_ms / step_ms:.0%} of a luna_bn training step of "
               f"{step_ms:.0f} ms); its sampling grid: F.affine_grid {torch_grid_ms:.1f} ms, "
               f"luna.train.augment.sampling_grid {our_grid_ms:.1f} ms ({torch_grid_ms / our_grid_ms:.1f}x)")
    report.write()


if __name__ == "__main__":
    main()

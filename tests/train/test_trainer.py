"""End-to-end training runs on a tiny synthetic LUNA16-format set (CPU, seconds each)."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from luna.runtime.checkpoint import load_checkpoint
from luna.models.registry import build_model
from luna.train.runlog import SCALAR_TAGS
from luna.cli.train import LunaTrainingApp
from luna.train.trainer import ClassifierTrainer
from tests.conftest import make_tiny_luna, train_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_luna(tmp_path_factory.mktemp("train") / "luna", n_series=4, negatives_per_scan=6)


def _argv(data, tmp_path, *extra):
    return train_argv(data["root"], tmp_path, "--epoch-size", "24", *extra)


def _run_dir(tmp_path) -> Path:
    (run_dir,) = [p for p in (tmp_path / "runs" / "luna").iterdir() if (p / "run.json").exists()]
    return run_dir


def _scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _summary(run_dir: Path) -> list[dict]:
    with open(run_dir / "summary.csv") as handle:
        return list(csv.DictReader(handle))


def test_help_lists_reference_flags(capsys):
    with pytest.raises(SystemExit) as info:
        LunaTrainingApp(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--num-workers", "--batch-size", "--epochs", "--tb-prefix", "comment", "--lr", "--momentum",
                 "--optimizer", "--balanced", "--epoch-size", "--augment", "--no-augment", "--augment-flip", "--augment-offset",
                 "--augment-scale", "--augment-rotate", "--augment-noise", "--augment-contrast", "--resume", "--seed",
                 "--precision", "--crop-edge", "--crop-mm"):
        assert flag in out, flag
    assert "(default: 32)" in out


def test_short_run_logs_tensorboard_summary_and_checkpoints(data, tmp_path, caplog):
    with caplog.at_level("INFO"):
        LunaTrainingApp(_argv(data, tmp_path, "--epochs", "2", "--augment")).main()
    text = caplog.text
    assert "Starting LunaTrainingApp, TrainConfig(" in text
    assert "Epoch 1 of 2: 3 training and 2 validation batches of 8*1 samples" in text
    for prefix in ("E1 trn      ", "E1 trn_neg  ", "E1 trn_pos  ", "E2 val      ", "E2 val_pos  "):
        assert prefix in text, prefix
    run_dir = _run_dir(tmp_path)
    assert (run_dir / "last.pt").exists() and (run_dir / "best.pt").exists()
    # By default best.pt is the final epoch's weights (--best-metric epoch), not a validation pick.
    best = load_checkpoint(run_dir / "best.pt")
    assert (best["epoch"], best["metric_name"], best["metric_value"]) == (2, "epoch", 2.0)
    assert "best.pt: the final epoch" in text
    rows = _summary(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["samples_seen"] for r in rows] == ["24", "48"]
    assert {"val_auc/roc", "val_froc/cpm", "trn_pr/f1_score", "val_correct/pos"} <= set(rows[0])
    # Two lazily created writers, named as the reference names them.
    tb_root = tmp_path / "runs" / "luna"
    trn_dir = next(tb_root.glob("*-trn_cls-luna"))
    val_dir = next(tb_root.glob("*-val_cls-luna"))
    for tb_dir in (trn_dir, val_dir):
        acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()
        for tag in SCALAR_TAGS[:6] + ("pr/f1_score", "auc/roc"):
            assert tag in tags["scalars"], (tb_dir.name, tag)
            assert [e.step for e in acc.Scalars(tag)] == [24, 48]  # x axis = samples seen
        assert "pr" in tags["tensors"]  # the precision-recall curve plugin stores tensors
    assert "froc/cpm" in EventAccumulator(str(val_dir)).Reload().Tags()["scalars"]


def test_checkpoint_reloads_in_a_new_process(data, tmp_path):
    LunaTrainingApp(_argv(data, tmp_path, "--epochs", "1")).main()
    ckpt_path = _run_dir(tmp_path) / "best.pt"
    code = (
        "import sys, torch\n"
        "from luna.runtime.checkpoint import load_checkpoint, load_model_state\n"
        "from luna.models.registry import build_model\n"
        "ckpt = load_checkpoint(sys.argv[1])\n"
        "model = build_model(ckpt['model_config']); load_model_state(model, ckpt, sys.argv[1], 'luna_twoscale')\n"
        "model.eval(); torch.manual_seed(0)\n"
        "print(float(model(torch.randn(2, 1, 32, 48, 48) * 300)[1][:, 1].sum()), ckpt['epoch'], ckpt['samples_seen'])\n")
    out = subprocess.run([sys.executable, "-c", code, str(ckpt_path)], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    from luna.models.registry import build_model
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        expected = float(model(torch.randn(2, 1, 32, 48, 48) * 300)[1][:, 1].sum())
    assert abs(float(out[0]) - expected) < 1e-6 and out[1:] == ["1", "24"]


def test_resume_continues_exactly_and_keeps_the_step_axis(data, tmp_path):
    # A constant learning rate: extending a cosine run would (rightly) stretch its schedule.
    straight = tmp_path / "straight"
    LunaTrainingApp(_argv(data, straight, "--epochs", "3", "--lr-schedule", "constant")).main()
    resumed = tmp_path / "resumed"
    LunaTrainingApp(_argv(data, resumed, "--epochs", "1", "--lr-schedule", "constant")).main()
    run_dir = _run_dir(resumed)
    LunaTrainingApp(_argv(data, resumed, "--epochs", "3", "--lr-schedule", "constant",
                          "--resume", str(run_dir))).main()
    assert load_checkpoint(run_dir / "best.pt")["epoch"] == 3  # the resumed run's final epoch
    rows, expected = _summary(run_dir), _summary(_run_dir(straight))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for key in ("samples_seen", "trn_loss/all", "val_loss/all", "val_auc/roc"):
        assert [r[key] for r in rows] == [r[key] for r in expected], key
    trn_dir = next((resumed / "runs" / "luna").glob("*-trn_cls-luna"))
    assert [step for step, _ in _scalars(trn_dir, "loss/all")] == [24, 48, 72]


def test_compiled_run_saves_plain_checkpoints(data, tmp_path):
    # torch.compile (inductor, needs a C++ compiler) in a process of its own; the checkpoint must
    # hold the unwrapped model's names so that an uncompiled model loads it strictly.
    cmd = [sys.executable, "-m", "luna", "train", *_argv(data, tmp_path, "--epochs", "1", "--compile")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(_run_dir(tmp_path) / "last.pt", weights_only=True)
    assert not any(name.startswith(("_orig_mod.", "module.")) for name in ckpt["model_state"])
    build_model(ckpt["model_config"]).load_state_dict(ckpt["model_state"])  # strict


@pytest.mark.parametrize("flag, value", [("--augment-contrast", "1.5"), ("--augment-offset", "-0.1")])
def test_bad_augmentation_is_one_line_before_any_work(data, tmp_path, flag, value):
    done = subprocess.run([sys.executable, "-m", "luna", "train", *_argv(data, tmp_path, flag, value)],
                          capture_output=True, text=True)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(errors) == 1 and "augmentation" in errors[0] and value in errors[0], done.stderr[-2000:]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def test_skip_excluded_leaves_out_only_the_negatives_on_excluded_findings(data, tmp_path):
    from tests.conftest import write_csv
    negatives = [row for row in data["candidates"] if row[4] == 0]
    positive = next(row for row in data["candidates"] if row[4] == 1)
    # Two negatives and one positive of any scan lie inside an excluded finding (3 mm radius).
    rows = [[row[0], row[1] + 1.0, row[2], row[3], 6.0] for row in (negatives[0], negatives[-1], positive)]
    excluded = write_csv(tmp_path / "excluded.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], rows)
    argv = _argv(data, tmp_path, "--excluded", str(excluded))
    plain, _ = ClassifierTrainer(LunaTrainingApp([*argv, "--no-skip-excluded"]).config)._datasets()
    skipping, val = ClassifierTrainer(LunaTrainingApp([*argv, "--skip-excluded"]).config)._datasets()
    train_uids = {c.series_uid for c in plain.candidates}
    expected = {tuple(row[1:4]) for row in (negatives[0], negatives[-1]) if row[0] in train_uids}
    assert expected  # the fixture puts at least one of them in the training split
    left_out = set(plain.candidates) - set(skipping.candidates)
    assert {c.center_xyz for c in left_out} == expected and not any(c.is_nodule for c in left_out)
    assert skipping.n_left_out == len(expected) and plain.n_left_out == 0
    assert len(skipping.pos_ndx) == len(plain.pos_ndx)
    assert val.n_left_out == 0  # validation keeps every candidate: its CPM scores them by the rules

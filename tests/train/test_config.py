import dataclasses

import pytest

from luna.cli.train import LunaTrainingApp
from luna.errors import UsageError
from luna.train.config import TrainConfig


def test_the_flags_defaults_are_the_configs_defaults():
    # One source of truth for the recipe: `luna train` with no flags builds TrainConfig().
    from_flags, default = LunaTrainingApp([]).config, TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        assert getattr(from_flags, f.name) == getattr(default, f.name), f.name


def test_defaults_are_the_working_recipe():
    c = TrainConfig()
    assert (c.model, c.optimizer, c.balanced, c.augmented, c.lr_schedule) == ("luna_twoscale", "adamw", 1, True, "cosine")
    assert c.hard_negatives == 0.5 and c.lr == 2e-3 and c.skip_excluded and c.best_metric == "epoch"
    aug = c.augment()
    assert aug.flip and aug.rotate and aug.offset == 0.03 and aug.scale == 0.2 and aug.noise == 25.0
    assert aug.contrast == 0.6


def test_augmentation_switches():
    assert LunaTrainingApp(["--no-augment"]).config.augment() is None
    off = ["--no-augment-flip", "--augment-offset", "0", "--augment-scale", "0", "--no-augment-rotate",
           "--augment-noise", "0"]
    assert LunaTrainingApp(off + ["--augment-contrast", "0"]).config.augment() is None
    assert LunaTrainingApp(off).config.augment().contrast == 0.6
    with pytest.raises(UsageError):
        LunaTrainingApp(["--augment-scale", "1.5"]).config.augment()


def test_from_dict_ignores_unknown_keys_and_restores_paths():
    c = TrainConfig.from_dict({"data_dir": "/x", "epochs": 3, "near_negatives": 0.2, "block_channels": None})
    assert str(c.data_dir) == "/x" and c.epochs == 3

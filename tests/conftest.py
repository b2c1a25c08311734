"""Shared fixtures: small LUNA16-format scans written with SimpleITK into a temp dir."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import SimpleITK as sitk

from luna.luna16.geometry import irc2xyz

UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."


def write_scan(path: Path, volume_irc: np.ndarray, origin_xyz=(-150.0, -160.0, -300.0),
               spacing_xyz=(0.8, 0.7, 2.5), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    """Write an int16 volume as ``path`` (.mhd) + .raw, the LUNA16 way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(volume_irc.astype(np.int16))
    image.SetOrigin(origin_xyz)
    image.SetSpacing(spacing_xyz)
    image.SetDirection([float(v) for v in direction])
    sitk.WriteImage(image, str(path), useCompression=False)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_tiny_luna(root: Path, n_series: int = 4, shape_irc=(40, 64, 64), seed: int = 0,
                   negatives_per_scan: int = 6) -> dict:
    """A few noise scans with known candidates: two nodules per scan (one near a border),
    ``negatives_per_scan`` negatives (some at the borders). Returns what it wrote."""
    rng = np.random.default_rng(seed)
    directions = [(1, 0, 0, 0, 1, 0, 0, 0, 1), (1, 0, 0, 0, 1, 0, 0, 0, -1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)]
    uids, candidates, annotations, geometry = [], [], [], {}
    for s in range(n_series):
        uid = f"{UID_PREFIX}{rng.integers(10**11, 10**12)}{s}"
        volume = rng.integers(-1200, 1500, size=shape_irc).astype(np.int16)
        origin = tuple(float(v) for v in rng.uniform(-200, -100, 3))
        spacing = (float(rng.uniform(0.6, 0.9)),) * 2 + (float(rng.uniform(1.0, 2.5)),)
        direction = directions[s % len(directions)]
        write_scan(root / f"subset{s % 10}" / f"{uid}.mhd", volume, origin, spacing, direction)
        geometry[uid] = (origin, spacing, direction, volume)
        i_max, r_max, c_max = (n - 1 for n in shape_irc)
        nodule_ircs = [(shape_irc[0] // 2, shape_irc[1] // 2, shape_irc[2] // 2), (1, r_max - 2, 3)]
        for n, irc in enumerate(nodule_ircs):
            xyz = irc2xyz(irc, origin, spacing, direction)
            diameter = 4.0 + 6 * n + s
            annotations.append([uid, *xyz, diameter])
            candidates.append([uid, *xyz, 1])
        border = [(0, 0, 0), (i_max, r_max, c_max), (i_max, 0, c_max // 2)]
        for k in range(negatives_per_scan):
            irc = border[k] if k < len(border) else tuple(int(rng.integers(0, n)) for n in shape_irc)
            candidates.append([uid, *irc2xyz(irc, origin, spacing, direction), 0])
        uids.append(uid)
    write_csv(root / "candidates.csv", ["seriesuid", "coordX", "coordY", "coordZ", "class"], candidates)
    write_csv(root / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], annotations)
    return {"root": root, "uids": uids, "candidates": candidates, "annotations": annotations,
            "geometry": geometry}


def make_spread_model(seed: int = 0, crop_shape_irc=(32, 48, 48), hu_mean: float = 100.0, hu_std: float = 300.0,
                      head_scale: float = 0.3):
    """A small LunaModel whose probabilities spread over (0, 1) on noise scans.

    Freshly initialised, it sees raw HU through an input norm with mean 0 and variance 1 and
    saturates to 0 or 1, which would make any comparison of scores pass. Running statistics
    that suit HU and a damped head keep the scores apart; crops with much air padding want
    a lower ``hu_mean``, a wider ``hu_std`` and a smaller ``head_scale``.
    """
    torch.manual_seed(seed)
    from luna.models.classifier import LunaModel

    model = LunaModel(conv_channels=4, crop_shape_irc=crop_shape_irc)
    with torch.no_grad():
        model.tail_batchnorm.running_mean.fill_(hu_mean)
        model.tail_batchnorm.running_var.fill_(hu_std ** 2)
        model.head_linear.weight.mul_(head_scale)
        model.head_linear.bias.zero_()
    return model.eval()


@pytest.fixture
def tiny_luna(tmp_path: Path) -> dict:
    return make_tiny_luna(tmp_path / "luna")


@pytest.fixture
def scan(tmp_path):
    """One 20 x 30 x 40 scan of random HU (beyond the clip range too), flipped in y."""
    rng = np.random.default_rng(0)
    volume = rng.integers(-3000, 3000, size=(20, 30, 40)).astype(np.int16)
    path = write_scan(tmp_path / "1.2.3.mhd", volume, (-10.0, -20.0, -30.0), (0.7, 0.8, 2.0),
                      (1, 0, 0, 0, -1, 0, 0, 0, 1))
    return path, volume


def train_argv(root: Path, tmp_path: Path, *extra: str, val_stride: int = 2) -> list[str]:
    """``luna train`` flags for a fast run on a tiny data set in a temp dir."""
    return ["--data-dir", str(root), "--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs"),
            "--val-stride", str(val_stride), "--batch-size", "8", "--num-workers", "0", "--precision", "fp32",
            *extra]


def help_text(app_cls, capsys) -> str:
    """What ``--help`` prints for an app (it exits 0)."""
    with pytest.raises(SystemExit) as info:
        app_cls(["--help"])
    assert info.value.code == 0
    return capsys.readouterr().out

"""Which test-time views pay: CPM of one checkpoint with several sets of views, side by side.

`luna predict --tta-views 8` averages the logits of the eight in-plane turns and mirror images of
each crop. This script scores the same candidates with more views than that (the eight again
with the head-foot axis mirrored, and crops moved by a voxel or two off the candidate centre),
keeps each view's logit, and prints the CPM of several averages, with and without the
non-maximum suppression `luna predict` applies by default.

To stay affordable it rescores only the candidates that an earlier 8-view results file of the
same checkpoint (written with `--nms-mm 0`) scored at or above `--min-probability`; the others
keep their 8-view logit in every set (they are far below the operating points of the curve).

    .venv/bin/python tools/compare_views.py runs/luna/<run>/last.pt --data-dir data/holdout \\
        --predictions P_nms0.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from luna.io.scans import find_series_files  # noqa: E402
from luna.runtime.checkpoint import load_checkpoint  # noqa: E402
from luna.data.crops import crop_volume  # noqa: E402
from luna.io.ct import Ct  # noqa: E402
from luna.runtime.device import StepConfig, resolve_performance  # noqa: E402
from luna.errors import DataError, LunaError  # noqa: E402
from luna.eval.evaluation import read_pooled_findings, read_pooled_predictions  # noqa: E402
from luna.eval.froc import compute_froc  # noqa: E402
from luna.models.views import VIEWS  # noqa: E402
from luna.runtime.device import prepare_model  # noqa: E402
from luna.runtime.checkpoint import load_model, resolve_checkpoint_path  # noqa: E402
from luna.eval.suppression import NMS_RADIUS_MM, suppress_neighbours  # noqa: E402

# Crops moved off the candidate centre, in voxels (I, R, C).
SHIFTS_IRC = ((0, 2, 0), (0, -2, 0), (0, 0, 2), (0, 0, -2), (1, 0, 0), (-1, 0, 0))


def view_logits(model: torch.nn.Module, x: torch.Tensor, shifted: list[torch.Tensor]) -> torch.Tensor:
    """(N, 16 + len(shifted)) nodule-minus-other logits: 16 flips of x, then each shifted batch as it is."""
    columns = []
    for flip_i in (False, True):
        base = x.flip([-3]) if flip_i else x
        for transpose, flip_r, flip_c in VIEWS:
            view = base.transpose(-1, -2) if transpose else base
            dims = [d for d, on in ((-2, flip_r), (-1, flip_c)) if on]
            columns.append(model(view.flip(dims) if dims else view)[0].float())
    columns += [model(batch)[0].float() for batch in shifted]
    return torch.stack([c[:, 1] - c[:, 0] for c in columns], dim=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint file or run directory")
    parser.add_argument("--data-dir", type=Path, required=True, help="the scans the predictions are of")
    parser.add_argument("--predictions", type=Path, required=True,
                        help="that checkpoint's 8-view results file on --data-dir, written with --nms-mm 0")
    parser.add_argument("--min-probability", type=float, default=0.1, help="rescore candidates scored at least this")
    parser.add_argument("--batch-size", type=int, default=64, help="crops per forward pass")
    args = parser.parse_args(argv)

    ckpt_path = resolve_checkpoint_path(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    device = torch.device("cpu")
    model = prepare_model(load_model(ckpt_path, ckpt), device, True).eval()
    # The precision luna predict picks here too: bf16 only where the CPU has kernels for it.
    step_cfg = StepConfig(device, resolve_performance("auto", "auto", device).precision, True)
    edge = str(ckpt.get("args", {}).get("crop_edge", "shift"))
    shape_irc = tuple(ckpt["model_config"]["crop_shape_irc"])

    predictions = read_pooled_predictions([args.predictions])
    uids, centers_xyz, p8 = predictions.series_uids, predictions.centers_xyz, predictions.probabilities
    logit8 = np.log(np.clip(p8, 1e-7, 1 - 1e-7) / np.clip(1 - p8, 1e-7, 1))
    n_views = 16 + len(SHIFTS_IRC)
    logits = np.repeat(logit8[:, None], n_views, axis=1)
    series_paths = find_series_files(args.data_dir)
    chosen = np.flatnonzero(p8 >= args.min_probability)
    missing = sorted(set(uids.tolist()) - set(series_paths))
    if missing:
        raise DataError(f"{args.predictions}: {len(missing)} scans are not in {args.data_dir} (e.g. {missing[0]})")
    with torch.inference_mode():
        for uid in np.unique(uids[chosen]):
            rows = chosen[uids[chosen] == uid]
            ct = Ct(series_paths[uid], uid)
            for start in range(0, len(rows), args.batch_size):
                part = rows[start:start + args.batch_size]
                centers_irc = [ct.center_irc_checked(centers_xyz[k]) for k in part]

                def batch(shift: tuple[int, int, int]) -> torch.Tensor:
                    crops = np.stack([crop_volume(ct.hu_a, [c + s for c, s in zip(center, shift)], shape_irc, edge)
                                      for center in centers_irc])
                    return step_cfg.to_device(torch.from_numpy(crops).unsqueeze(1)).float()

                with step_cfg.autocast():
                    out = view_logits(model, batch((0, 0, 0)), [batch(s) for s in SHIFTS_IRC])
                logits[part] = out.numpy()
            print(f"rescored {len(rows)} candidates of {uid}", file=sys.stderr)

    annotations = read_pooled_findings([args.data_dir / "annotations.csv"])
    excluded_csv = args.data_dir / "annotations_excluded.csv"
    excluded = read_pooled_findings([excluded_csv], "excluded") if excluded_csv.exists() else None
    series = sorted(set(uids))
    view_sets = {
        "1 view": [0],
        "8 views (luna predict's default)": list(range(8)),
        "16 views (the 8, head-foot mirrored too)": list(range(16)),
        f"1 view + {len(SHIFTS_IRC)} moved crops": [0] + list(range(16, n_views)),
        f"8 views + {len(SHIFTS_IRC)} moved crops": list(range(8)) + list(range(16, n_views)),
    }
    print(f"{len(chosen)} of {len(p8)} candidates rescored; CPM on {len(series)} scans")
    print(f"{'views':<44} {'no suppression':>15} {'suppression':>12}")
    for name, columns in view_sets.items():
        probabilities = 1 / (1 + np.exp(-logits[:, columns].mean(axis=1)))
        suppressed = suppress_neighbours(centers_xyz, probabilities, NMS_RADIUS_MM, uids)
        cpm = [compute_froc(uids, centers_xyz, p, annotations, excluded, series).cpm
               for p in (probabilities, suppressed)]
        print(f"{name:<44} {cpm[0]:>15.3f} {cpm[1]:>12.3f}")


if __name__ == "__main__":
    try:
        main()
    except (LunaError, OSError) as exc:  # bad input: one line, not a traceback
        sys.exit(f"compare_views.py: {exc}")

"""LUNA16-format chest phantoms drawn by a second generator, written apart from ``luna.synth``.

luna's held-out sets are all drawn by its own generator, so a model can learn that generator's way
of drawing vessels and nodules and still look good on every one of them; issue 23's scans made by
another tool showed that gap. This script is a second, independent way to draw a LUNA16-format
data set: it imports nothing from ``luna`` and shares none of its drawing choices, so the "other"
held-out set (tools/heldout.py) scores a model on anatomy and acquisition it never trained on.

What it draws differently from ``luna synth``:
- vessels and airways grow as curving random walks that fork by Murray's law (parent radius cubed
  = the sum of the children's), and are rendered from a distance transform to their centre lines
  (smooth joins, a soft profile, airways as walls around an air lumen);
- lungs have a dependent-density gradient (denser towards the back), lumpy borders, a domed
  diaphragm, and fissures (thin bright sheets);
- nodules are lobulated, spiculated, ground glass, part-solid or calcified; about half are under
  6 mm; some sit on the pleura or on a vessel; vessels running through ground glass stay visible;
- some scans are contrast-enhanced (bright vessels), the reconstruction circle is padded at
  -1024, -2000 or -3024 HU, slices are 0.625-2.5 mm with a Gaussian slice profile wider than their
  spacing, the kernel sets both the blur and the noise texture (sharp kernels enhance edges), and
  the series uids are ``2.25.<uuid>`` ones;
- the candidates are those of a blob detector (differences of Gaussians at two scales inside the
  lungs), as a CAD system's are, plus one to two points on each nodule: class 1 when inside a
  nodule's radius.

    .venv/bin/python tools/other_phantoms.py OUT --series 8 [--seed 8] [--size full|tiny] [--workers 2]

The anatomy is drawn by tools/other_anatomy.py; this script is the scanner, the candidates and the files.

Writes ``OUT/subset<k>/<uid>.mhd/.raw``, ``annotations.csv``, ``annotations_excluded.csv`` (nodules
under 3 mm, scored neither way) and ``candidates.csv``, and for the analysis of misses
``phantom_nodules.csv`` (every nodule with its kind) and ``phantom_scans.csv`` (each scan's
acquisition and contrast), into a temporary folder moved into place when all is written. Same
seed and size, same files.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from other_anatomy import Scene, draw_body, draw_fissures, draw_vessels_and_airways, place_nodules  # noqa: E402

# in-plane matrix, field of view (mm), scan length (mm), fine z step (mm) of the drawing grid
SIZES = {"full": (512, (310.0, 400.0), (230.0, 320.0), 0.7), "tiny": (96, (300.0, 340.0), (150.0, 170.0), 2.0)}
SLICE_SPACINGS_MM = (0.625, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5)
N_SUBSETS = 10
SETTINGS = ("contrast", "vessel_hu", "slice_spacing_mm", "slice_thickness_mm", "pixel_mm", "sharp_kernel", "noise_hu",
            "hu_offset", "padding_hu")  # the columns of phantom_scans.csv, in the order they are drawn


def acquire(rng: np.random.Generator, scene: Scene, fov_mm: float) -> tuple[np.ndarray, float]:
    """The scanner: in-plane blur and edge enhancement by kernel, a slice profile, noise, calibration, padding."""
    pixel_mm, dz = scene.step_mm[1], scene.step_mm[0]
    spacing = float(rng.choice(SLICE_SPACINGS_MM))
    thickness = spacing * rng.uniform(1.0, 1.6)
    sharp = rng.random() < 0.4
    hu = ndimage.gaussian_filter(scene.hu, (thickness / 2.355 / dz, *([rng.uniform(0.4, 0.9)] * 2)))
    if sharp:
        hu += rng.uniform(0.3, 0.9) * (hu - ndimage.gaussian_filter(hu, (0, 1.0, 1.0)))
    z_fine = np.arange(0, (hu.shape[0] - 1) * dz + 1e-6, spacing) / dz
    below = np.floor(z_fine).astype(int)
    above = np.minimum(below + 1, hu.shape[0] - 1)
    weight = (z_fine - below)[:, None, None].astype(np.float32)
    slices = hu[below] * (1 - weight) + hu[above] * weight
    noise = rng.normal(size=slices.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, (0, *([rng.uniform(0.5, 0.8) if sharp else rng.uniform(0.9, 1.5)] * 2)))
    noise_hu, offset_hu = rng.uniform(20, 70), rng.uniform(-15, 15)
    slices += noise * (noise_hu / noise.std()) + offset_hu
    n = slices.shape[1]
    centre = (np.arange(n) - (n - 1) / 2) * pixel_mm
    outside = centre[None, :] ** 2 + centre[:, None] ** 2 > (fov_mm / 2) ** 2
    slices[:, outside] = padding = rng.choice([-1024, -2000, -3024])
    scene.settings.update(slice_spacing_mm=spacing, slice_thickness_mm=round(thickness, 3), pixel_mm=round(pixel_mm, 4),
                          sharp_kernel=int(sharp), noise_hu=round(noise_hu, 1), hu_offset=round(offset_hu, 1),
                          padding_hu=int(padding))
    return np.clip(np.round(slices), -3024, 3071).astype(np.int16), spacing


def blob_candidates(rng: np.random.Generator, image: np.ndarray, spacing_zyx: np.ndarray,
                    lung: np.ndarray) -> np.ndarray:
    """Voxel indices (z, y, x) of a CAD-like detector's hits: local maxima of two differences of Gaussians."""
    hu = np.clip(image.astype(np.float32), -1000, 400)
    hits = []
    for sigma_mm in (1.2, 2.5):
        sigma = sigma_mm / spacing_zyx
        response = ndimage.gaussian_filter(hu, sigma) - ndimage.gaussian_filter(hu, 2 * sigma)
        peak = ndimage.maximum_filter(response, size=np.maximum(3, np.round(3 * sigma_mm / spacing_zyx)).astype(int))
        keep = (response == peak) & lung & (response > 20)
        index = np.argwhere(keep)
        order = np.argsort(-response[keep])
        hits.append(index[order[: int(rng.integers(350, 650))]])
    return np.concatenate(hits)


@dataclass
class DrawnScan:
    """One scan's image and its rows of each CSV (world mm)."""
    uid: str
    image: sitk.Image
    annotations: list[list]
    excluded: list[list]
    candidates: list[list]
    nodules: list[list]  # phantom_nodules.csv: every nodule drawn, with its kind
    settings: list  # phantom_scans.csv: the scan's acquisition and contrast


def make_scan(seed: int, index: int, size: str) -> DrawnScan:
    """One scan, drawn from its own random stream (the same seed, index and size: the same scan)."""
    rng = np.random.default_rng([seed, index, 2])
    matrix, fov_range, length_range, dz = SIZES[size]
    fov_mm, length_mm = rng.uniform(*fov_range), rng.uniform(*length_range)
    step = np.array([dz, fov_mm / matrix, fov_mm / matrix])
    scene = draw_body(rng, (int(length_mm / dz), matrix, matrix), step, fov_mm)
    draw_vessels_and_airways(rng, scene, fov_mm)
    draw_fissures(rng, scene)
    place_nodules(rng, scene, int(rng.integers(3, 10)))
    place_nodules(rng, scene, int(rng.integers(0, 3)), excluded=True)
    image, spacing = acquire(rng, scene, fov_mm)
    origin_xyz = np.array([-fov_mm / 2 + rng.uniform(-20, 20), -fov_mm / 2 + rng.uniform(-40, 0),
                           rng.uniform(-350, -80)])
    uid = f"2.25.{uuid.UUID(int=int(rng.integers(2 ** 63)) << 64 | int(rng.integers(2 ** 63))).int}"

    def world(zyx_mm: np.ndarray) -> list[float]:
        return [round(float(v), 4) for v in origin_xyz + zyx_mm[::-1]]

    real = [n for n in scene.nodules if n.kind != "excluded"]
    annotations = [[uid, *world(n.center_mm), round(n.diameter_mm, 4)] for n in real]
    excluded = [[uid, *world(n.center_mm), round(n.diameter_mm, 4)] for n in scene.nodules if n.kind == "excluded"]
    spacing_zyx = np.array([spacing, step[1], step[2]])
    lung = ndimage.binary_dilation(scene.lung[np.minimum(np.round(np.arange(image.shape[0]) * spacing / dz).astype(int),
                                                         scene.lung.shape[0] - 1)], iterations=2)
    points = [hit * spacing_zyx for hit in blob_candidates(rng, image, spacing_zyx, lung)]
    for n in real:  # a CAD system's one or two marks on each nodule
        points += [n.center_mm + rng.normal(0, n.diameter_mm * 0.1, 3) for _ in range(rng.integers(1, 3))]
    candidates = []
    for p in points:
        hit = any(np.linalg.norm(p - n.center_mm) < n.diameter_mm / 2 for n in real)
        candidates.append([uid, *world(p), int(hit)])
    image = sitk.GetImageFromArray(image)
    image.SetSpacing((float(step[2]), float(step[1]), spacing))
    image.SetOrigin(tuple(float(v) for v in origin_xyz))
    nodules = [[uid, *world(n.center_mm), round(n.diameter_mm, 4), n.kind] for n in scene.nodules]
    return DrawnScan(uid, image, annotations, excluded, candidates, nodules, [uid, *scene.settings.values()])


def build(job: tuple[int, int, str, Path]) -> DrawnScan:
    seed, index, size, out = job
    scan = make_scan(seed, index, size)
    folder = out / f"subset{index % N_SUBSETS}"
    folder.mkdir(exist_ok=True)
    sitk.WriteImage(scan.image, str(folder / f"{scan.uid}.mhd"))
    scan.image = None  # the image is on disk; only the rows go back to the parent process
    return scan


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def make_dataset(out: Path, series: int, seed: int, size: str, workers: int) -> Path:
    """Write the data set into ``OUT.tmp`` and move it into place when every file is there."""
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose a new folder")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    jobs = [(seed, i, size, tmp) for i in range(series)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        scans = list(pool.map(build, jobs))
    xyz = ["seriesuid", "coordX", "coordY", "coordZ"]
    write_csv(tmp / "annotations.csv", xyz + ["diameter_mm"], [r for s in scans for r in s.annotations])
    write_csv(tmp / "annotations_excluded.csv", xyz + ["diameter_mm"], [r for s in scans for r in s.excluded])
    write_csv(tmp / "candidates.csv", xyz + ["class"], [r for s in scans for r in s.candidates])
    write_csv(tmp / "phantom_nodules.csv", xyz + ["diameter_mm", "kind"], [r for s in scans for r in s.nodules])
    write_csv(tmp / "phantom_scans.csv", ["seriesuid", *SETTINGS], [s.settings for s in scans])
    tmp.rename(out)
    return out


def positive(text: str) -> int:
    """A count of at least 1 (luna.cli has one too; this script stays free of luna's code)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a new folder for the data set")
    parser.add_argument("--series", type=positive, default=8, help="how many scans (default 8)")
    parser.add_argument("--seed", type=int, default=8, help="the random seed (default 8, as the held-out sets)")
    parser.add_argument("--size", choices=list(SIZES), default="full", help="full: 512 x 512 at 0.6-0.8 mm pixels")
    parser.add_argument("--workers", type=positive, default=2, help="scans drawn at once (each takes a few GB)")
    args = parser.parse_args(argv)
    try:
        make_dataset(args.out, args.series, args.seed, args.size, args.workers)
    except OSError as exc:
        print(f"other_phantoms.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

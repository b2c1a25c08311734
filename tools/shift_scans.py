"""A shifted copy of a LUNA16-format data set: the same patients as another scanner would show them.

A model tuned on one kind of scan must be checked on scans unlike it. This rewrites every scan
of a data dir as if it had been acquired with thicker slices, another reconstruction kernel and
another HU calibration, and copies the CSVs unchanged (the world coordinates stay right: only the
voxels change, not the patient):

- slices: the volume is blurred along the head-foot axis by a Gaussian slice profile whose full
  width at half maximum is ``--slice-mm`` (partial volume), then resampled to ``--slice-mm``
  spacing (linear interpolation of the blurred volume);
- noise: white noise of ``--noise-hu`` standard deviation, blurred in-plane by ``--noise-blur-px``
  (a smoother kernel's texture) before it is added;
- calibration: ``--hu-offset`` is added to every voxel.

    .venv/bin/python tools/shift_scans.py data/h8 data/h8_thick [--slice-mm 3.0] [--noise-hu 40]
        [--noise-blur-px 0.7] [--hu-offset 20] [--seed 0]

The output has the input's layout (``subset*/<uid>.mhd`` + ``.raw``); any format luna reads goes
in, MetaImage comes out. Same input and flags, same files.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from luna.errors import LunaError  # noqa: E402
from luna.io.ct import read_image  # noqa: E402
from luna.io.scans import find_series_files  # noqa: E402
from luna.io.writers import write_image  # noqa: E402

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))  # ~2.355


def thicken(image: sitk.Image, slice_mm: float) -> sitk.Image:
    """Blur along the image's third axis by a slice profile of ``slice_mm`` FWHM, then resample
    to ``slice_mm`` spacing; origin and direction are kept, so world positions do not move."""
    spacing = image.GetSpacing()
    hu = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x)
    # The scan's own slices already have a profile about as wide as their spacing: add only what
    # is missing (Gaussian widths add in quadrature).
    sigma_mm = np.sqrt(max(slice_mm ** 2 - spacing[2] ** 2, 0.0)) / FWHM_PER_SIGMA
    if sigma_mm > 0:
        hu = gaussian_filter(hu, sigma=(sigma_mm / spacing[2], 0, 0), mode="nearest")
    blurred = sitk.GetImageFromArray(hu)
    blurred.CopyInformation(image)
    # Cover the whole extent (the last slice may reach up to one new slice past the old last one,
    # its value taken from the nearest old slice): every candidate of the CSVs stays inside.
    n_slices = int(np.ceil((image.GetSize()[2] - 1) * spacing[2] / slice_mm - 1e-9)) + 1
    return sitk.Resample(blurred, [image.GetSize()[0], image.GetSize()[1], n_slices], sitk.Transform(),
                         sitk.sitkLinear, image.GetOrigin(), (spacing[0], spacing[1], slice_mm),
                         image.GetDirection(), -1000.0, sitk.sitkFloat32, True)


def reacquire(image: sitk.Image, slice_mm: float, noise_hu: float, noise_blur_px: float, hu_offset: float,
              rng: np.random.Generator) -> sitk.Image:
    """One scan as the shifted scanner shows it, int16 HU."""
    thick = thicken(image, slice_mm) if slice_mm > 0 else sitk.Cast(image, sitk.sitkFloat32)
    hu = sitk.GetArrayFromImage(thick)
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    if noise_blur_px > 0:
        noise = gaussian_filter(noise, sigma=(0, noise_blur_px, noise_blur_px))
        noise /= max(float(noise.std()), 1e-6)  # keep the asked standard deviation after blurring
    hu += noise * np.float32(noise_hu) + np.float32(hu_offset)
    out = sitk.GetImageFromArray(np.clip(np.rint(hu), -32768, 32767).astype(np.int16))
    out.CopyInformation(thick)
    return out


def shift_data_dir(src: Path, dst: Path, slice_mm: float, noise_hu: float, noise_blur_px: float,
                   hu_offset: float, seed: int) -> int:
    """Write the shifted copy of ``src`` to ``dst`` (which must not exist); return the scan count."""
    if dst.exists():
        raise LunaError(f"{dst} exists; give a new folder")
    series = find_series_files(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        for index, (uid, path) in enumerate(sorted(series.items())):
            image, _ = read_image(path, uid)
            rng = np.random.default_rng([seed, index])
            shifted = reacquire(image, slice_mm, noise_hu, noise_blur_px, hu_offset, rng)
            folder = tmp / path.relative_to(src).parent  # a scan file's folder, or a DICOM folder's subset
            folder.mkdir(parents=True, exist_ok=True)
            write_image(shifted, folder / f"{uid}.mhd", "mhd", uid)
        for csv_path in sorted(src.rglob("*.csv")):
            target = tmp / csv_path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(csv_path, target)
        tmp.chmod(0o755)
        tmp.rename(dst)  # the whole folder appears at once, or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(series)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a LUNA16-format data dir")
    parser.add_argument("dst", type=Path, help="the folder to write (must not exist)")
    parser.add_argument("--slice-mm", type=float, default=3.0, help="slice thickness and spacing (0: keep)")
    parser.add_argument("--noise-hu", type=float, default=40.0, help="standard deviation of the added noise")
    parser.add_argument("--noise-blur-px", type=float, default=0.7, help="in-plane blur of the noise (pixels)")
    parser.add_argument("--hu-offset", type=float, default=20.0, help="added to every voxel (calibration)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    args = parser.parse_args(argv)
    try:
        n = shift_data_dir(args.src, args.dst, args.slice_mm, args.noise_hu, args.noise_blur_px, args.hu_offset,
                           args.seed)
    except (LunaError, OSError) as exc:
        print(f"shift_scans: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {n} shifted scans to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

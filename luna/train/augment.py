"""Random, per-sample augmentation of a whole batch on the batch's own device.

Applied to batches after they leave the crop cache (never cached), as the reference's follow-up
work describes: random flips, offsets (the reference: up to ~10% of the crop; luna's default 3%,
see :class:`AugmentConfig`),
scaling of +/-20%, rotation about the head-foot axis and Gaussian noise of ~25 HU; beyond the
reference, a random loss of contrast (see :class:`AugmentConfig`). The geometric
part is one affine transform per sample, resampled with an affine grid (:func:`sampling_grid`) +
``grid_sample`` in a single pass, so the batch never round-trips to the CPU.

Coordinates. A batch is (N, 1, I, R, C); I is the head-foot axis (z), R is y and C is x.
``affine_grid``'s theta maps an *output* point, in normalised (x, y, z) = (C, R, I) coordinates
where -1 and +1 are the outer edges of the crop (``align_corners=False``), to the *input* point it
samples. So a normalised distance of 2.0 is the full extent of an axis.

Determinism. All random parameters are drawn, in a fixed order, from one generator (on its own
device, normally the CPU), so the same seed gives the same transforms on CPU and GPU. The noise is
drawn on the batch's device by a generator seeded from that stream: cheaper than drawing ~2.4 M
numbers per batch on the CPU and copying them over, at the price that CPU and GPU runs get
different (equally distributed) noise.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from luna.errors import UsageError

log = logging.getLogger(__name__)

# Keeps noise seeds inside the range every torch generator accepts.
_MAX_SEED = 2 ** 63 - 1

# Contrast is scaled about air, so air stays air and everything denser fades towards it.
AIR_HU = -1000.0
# Share of samples whose contrast is reduced; the rest keep the scanner's own, so the model
# still mostly sees crops as they come.
CONTRAST_PROBABILITY = 0.5


@dataclass
class AugmentConfig:
    """Which augmentations to apply and how strongly; 0 / False switches a component off.

    Args:
        flip: mirror each of the three axes with probability 0.5.
        offset: largest shift per axis, as a fraction of the crop size on that axis. The
            reference's 0.1 moves a nodule up to ~5 voxels (~7 mm) off the centre, as far as the
            negative candidates that lie just outside a nodule: a positive shown that way looks
            exactly like them, and the model learns to score both high. 0.03 (~1.5 voxels)
            keeps positives inside the hit radius.
        scale: per-axis sampling scale uniform in [1 - scale, 1 + scale]; a factor above 1
            samples a larger region, so the content looks smaller (as in the reference).
        rotate: rotate by a uniform angle in [0, 2 pi) about the head-foot (I) axis.
        noise: standard deviation of added Gaussian noise, in HU.
        contrast: largest loss of contrast. Half of the samples (:data:`CONTRAST_PROBABILITY`)
            get ``hu -> air + a * (hu - air)`` with ``a`` uniform in ``[1 - contrast, 1]``: a
            solid nodule then looks as faint as a ground-glass one, or as a small nodule blurred
            by partial volume in a thick slice. Without it the model meets few faint nodules in
            training and learns those few by heart instead of "a round thing, of any density".
    """

    flip: bool = True
    offset: float = 0.03
    scale: float = 0.2
    rotate: bool = True
    noise: float = 25.0
    contrast: float = 0.6

    def __post_init__(self) -> None:
        if not 0.0 <= self.offset <= 1.0:
            raise UsageError(f"augmentation offset must be a fraction of the crop in [0, 1], "
                             f"got {self.offset}")
        if not 0.0 <= self.scale < 1.0:
            raise UsageError(f"augmentation scale must be in [0, 1), got {self.scale}")
        if not 0.0 <= self.noise < math.inf:
            raise UsageError(f"augmentation noise must be a finite HU value >= 0, got {self.noise}")
        if not 0.0 <= self.contrast < 1.0:
            raise UsageError(f"augmentation contrast must be in [0, 1), got {self.contrast}")

    @property
    def geometric(self) -> bool:
        """True when any component that moves voxels is on."""
        return bool(self.flip or self.offset > 0 or self.scale > 0 or self.rotate)

    @property
    def enabled(self) -> bool:
        """True when :func:`augment_batch` would change anything."""
        return self.geometric or self.noise > 0 or self.contrast > 0


@dataclass
class AugmentParams:
    """The random draws for one batch; per-axis values are in (I, R, C) order.

    Attributes:
        flip: (N, 3) bool, mirror that axis.
        offset: (N, 3) content shift as a fraction of the crop size (0.1 on a 48-voxel axis moves
            the content 4.8 voxels towards higher indices).
        scale: (N, 3) sampling scale factors (1.0 = unchanged).
        angle: (N,) radians; the content turns by this angle in the (C, R) plane, from +C
            towards +R.
        noise_seed: seeds the device-side noise generator.
        contrast: (N,) factors the HU above air are multiplied by (1.0 = unchanged).
    """

    flip: torch.Tensor
    offset: torch.Tensor
    scale: torch.Tensor
    angle: torch.Tensor
    noise_seed: int
    contrast: torch.Tensor


def draw_params(n: int, config: AugmentConfig, generator: torch.Generator | None = None) -> AugmentParams:
    """Draw one batch's random parameters.

    Every component is always drawn, in the same order, and disabled ones are then neutralised:
    switching one component off leaves the draws of the others unchanged for a given seed.

    Args:
        n: batch size.
        config: which components are on and their strengths.
        generator: source of randomness; None uses torch's global CPU generator.

    Returns:
        The parameters, as CPU tensors.
    """
    device = generator.device if generator is not None else torch.device("cpu")

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device).cpu()

    flip = uniform(n, 3) < 0.5
    offset = (uniform(n, 3) * 2 - 1) * config.offset
    scale = 1 + (uniform(n, 3) * 2 - 1) * config.scale
    angle = uniform(n) * (2 * math.pi)
    noise_seed = int(torch.randint(_MAX_SEED, (1,), generator=generator, device=device))
    # Drawn last, so runs without it keep every earlier draw of a given seed.
    fade = (uniform(n) < CONTRAST_PROBABILITY) * uniform(n) * config.contrast
    return AugmentParams(
        flip=flip & bool(config.flip),
        offset=offset,  # already 0 when config.offset == 0, as are the scale deviations
        scale=scale,
        angle=angle if config.rotate else torch.zeros_like(angle),
        noise_seed=noise_seed,
        contrast=1.0 - fade,
    )


def build_theta(params: AugmentParams, shape_irc: Sequence[int]) -> torch.Tensor:
    """The (N, 3, 4) float32 ``affine_grid`` matrices for drawn parameters.

    theta = [A | t] with A = D @ Rot: an output point is first rotated, then flipped/scaled
    per axis (D), the order of the reference. t = -A @ shift makes the content move by exactly
    the drawn offset, whatever the flip/scale/rotation.

    Args:
        params: from :func:`draw_params`.
        shape_irc: the crop size (I, R, C), needed to keep rotations rigid when R != C.

    Returns:
        float32 CPU tensor of shape (N, 3, 4).
    """
    size_i, size_r, size_c = (int(s) for s in shape_irc)
    to_xyz = [2, 1, 0]  # (I, R, C) -> theta's (x, y, z) = (C, R, I)
    n = params.angle.shape[0]

    signs = 1.0 - 2.0 * params.flip[:, to_xyz].float()
    diag = torch.diag_embed(signs * params.scale[:, to_xyz].float())

    # Content turning by +angle means sampling from the point turned by -angle. A rotation in
    # voxels becomes S Rot S^-1 in normalised units, S = diag(2/C, 2/R): with R == C (48 x 48)
    # the factors cancel, otherwise they keep the rotation rigid in voxels instead of shearing.
    cos, sin = torch.cos(params.angle).float(), torch.sin(params.angle).float()
    rot = torch.eye(3).repeat(n, 1, 1)
    rot[:, 0, 0] = cos
    rot[:, 0, 1] = sin * (size_r / size_c)
    rot[:, 1, 0] = -sin * (size_c / size_r)
    rot[:, 1, 1] = cos

    linear = diag @ rot
    # A fraction f of an axis is 2 f in normalised units (the axis spans -1..1).
    shift = 2.0 * params.offset[:, to_xyz].float()
    translation = -(linear @ shift.unsqueeze(-1))
    return torch.cat([linear, translation], dim=2)


def sampling_grid(theta: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """What ``F.affine_grid(theta, size, align_corners=False)`` returns, several times faster on a CPU.

    The grid of an affine map is a sum of three outer products (one per axis), so it is
    assembled by broadcasting: one pass over the (N, I, R, C, 3) output instead of a batched
    matrix product over every voxel (12.8 vs 2.4 ms for 32 crops of 32x48x48 on 2 cores,
    ``benchmarks/bench_model.py``).

    Args:
        theta: (N, 3, 4) affine matrices, as for ``affine_grid``.
        size: the (N, C, I, R, C) size of the batch to resample.

    Returns:
        (N, I, R, C, 3) sampling points in normalised (x, y, z) coordinates.
    """
    _, _, size_i, size_r, size_c = (int(s) for s in size)

    def centres(k: int) -> torch.Tensor:  # voxel centres in -1..1 (align_corners=False)
        return (torch.arange(k, dtype=theta.dtype, device=theta.device) * 2 + 1) / k - 1

    def column(j: int) -> torch.Tensor:  # theta[:, :, j] shaped to broadcast over (N, I, R, C, 3)
        return theta[:, None, None, None, :, j]

    grid = column(2) * centres(size_i)[None, :, None, None, None] + column(3)  # (N, I, 1, 1, 3)
    grid = grid + column(1) * centres(size_r)[None, None, :, None, None]       # (N, I, R, 1, 3)
    return grid + column(0) * centres(size_c)[None, None, None, :, None]       # (N, I, R, C, 3)


def augment_batch(batch: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment every sample of a batch with its own random transform and noise.

    Args:
        batch: (N, C, I, R, C) crops in HU (C is 1 here), float32 or bf16, on any device and in
            either memory format. It is not modified.
        config: what to apply; with nothing enabled the batch itself is returned.
        generator: makes the result reproducible; None uses torch's global random state.

    Returns:
        A new tensor with the batch's shape, dtype, device and memory format.
    """
    if not config.enabled:
        return batch
    if batch.dim() != 5:
        raise ValueError(f"expected an (N, C, I, R, C) batch, got shape {tuple(batch.shape)}")

    params = draw_params(batch.shape[0], config, generator)
    # Resample and add noise in float32: bf16 keeps only ~3 significant digits (+/-4 HU at 1000),
    # and it is cast once at the end instead of after every step.
    out = batch.float()

    if config.geometric:
        theta = build_theta(params, batch.shape[2:]).to(batch.device)
        grid = sampling_grid(theta, out.shape)
        # 'border' repeats edge voxels where the transform looks outside the crop, rather than
        # inventing zeros (0 HU is water, not "nothing").
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)

    if config.contrast > 0:
        # Before the noise: contrast belongs to the anatomy and the slice, noise to the detector.
        factor = params.contrast.to(device=batch.device, dtype=torch.float32).view(-1, 1, 1, 1, 1)
        out = (out - AIR_HU).mul_(factor).add_(AIR_HU)

    if config.noise > 0:
        noise_gen = torch.Generator(device=batch.device)
        noise_gen.manual_seed(params.noise_seed)
        noise = torch.randn(out.shape, generator=noise_gen, device=batch.device, dtype=torch.float32)
        out = noise.mul_(config.noise).add_(out)  # fresh tensor: never writes into the input

    if batch.is_contiguous(memory_format=torch.channels_last_3d) and not batch.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last_3d)
    return out.to(batch.dtype)

"""The candidate classifiers: the reference 3D CNN and its variants, by name (:data:`CLASSIFIERS`).

:class:`LunaModel` is the reference architecture exactly: a BatchNorm on the raw
HU input, four conv blocks that halve every spatial axis, and one linear layer on the flattened
features. Checkpoints keep ``model.config`` (a small JSON-able dict) so that
:func:`luna.models.registry.build_model` can rebuild the same network without the caller knowing which
class or sizes were used.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
from torch import nn

from luna.luna16.sample import CROP_SHAPE_IRC

log = logging.getLogger(__name__)

# Each block halves I, R and C once; four blocks divide the crop by 16 on every axis.
_NUM_BLOCKS = 4


class LunaBlock(nn.Module):
    """Two 3x3x3 convolutions with ReLU, then a 2x2x2 max-pool.

    Args:
        in_channels: channels coming in.
        conv_channels: channels of both convolutions (and of the output).
        batch_norm: put a BatchNorm3d after each convolution (not in the reference; the
            convolutions then drop their bias, which the norm would cancel anyway).
    """

    def __init__(self, in_channels: int, conv_channels: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, conv_channels, kernel_size=3, padding=1, bias=not batch_norm)
        self.norm1 = nn.BatchNorm3d(conv_channels) if batch_norm else nn.Identity()
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(conv_channels, conv_channels, kernel_size=3, padding=1, bias=not batch_norm)
        self.norm2 = nn.BatchNorm3d(conv_channels) if batch_norm else nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.relu2(self.norm2(self.conv2(x)))
        return self.maxpool(x)


class LunaModel(nn.Module):
    """The reference nodule classifier.

    Args:
        in_channels: channels of the input crop (1: HU values).
        conv_channels: channels of the first block; each later block doubles them.
        crop_shape_irc: input crop size (I, R, C); only sizes the head (the reference hard-codes
            the 1,152 features that the default 32x48x48 crop leaves). Each axis must be >= 16.
        batch_norm_from: the "luna_bn" variant: blocks from this one on (1-based) get a
            BatchNorm after each convolution, see :class:`LunaBlock`; None (the reference) for
            none.
    """

    name = "luna"

    def __init__(self, in_channels: int = 1, conv_channels: int = 8,
                 crop_shape_irc: Sequence[int] = CROP_SHAPE_IRC, batch_norm_from: int | None = None) -> None:
        super().__init__()
        crop_shape_irc = tuple(int(s) for s in crop_shape_irc)
        if len(crop_shape_irc) != 3 or min(crop_shape_irc) < 2 ** _NUM_BLOCKS:
            raise ValueError(f"crop_shape_irc must be three sizes >= 16, got {crop_shape_irc}")
        self._config = {
            "name": self.name,
            "in_channels": int(in_channels),
            "conv_channels": int(conv_channels),
            "crop_shape_irc": list(crop_shape_irc),
        }

        # The network sees raw HU (-1000..1000): this norm rescales it to something convs like.
        self.tail_batchnorm = nn.BatchNorm3d(in_channels)
        channels = [in_channels] + [conv_channels * 2 ** k for k in range(_NUM_BLOCKS)]
        if batch_norm_from is not None:
            if not 1 <= batch_norm_from <= _NUM_BLOCKS:
                raise ValueError(f"batch_norm_from must be a block number 1..{_NUM_BLOCKS}, got {batch_norm_from}")
            self._config["batch_norm_from"] = int(batch_norm_from)
        norm = [batch_norm_from is not None and k >= batch_norm_from for k in range(1, _NUM_BLOCKS + 1)]
        self.block1 = LunaBlock(channels[0], channels[1], norm[0])
        self.block2 = LunaBlock(channels[1], channels[2], norm[1])
        self.block3 = LunaBlock(channels[2], channels[3], norm[2])
        self.block4 = LunaBlock(channels[3], channels[4], norm[3])

        # MaxPool3d floors odd sizes, so floor-divide once per block.
        out_shape = [s // 2 ** _NUM_BLOCKS for s in crop_shape_irc]
        self.head_linear = nn.Linear(channels[-1] * math.prod(out_shape), 2)
        self.head_softmax = nn.Softmax(dim=1)

        self._init_weights()

    @property
    def config(self) -> dict:
        """What :func:`luna.models.registry.build_model` needs to rebuild this network (a fresh, JSON-able dict)."""
        return dict(self._config, crop_shape_irc=list(self._config["crop_shape_irc"]))

    def _init_weights(self) -> None:
        for module in self.modules():
            if not isinstance(module, (nn.Conv3d, nn.Linear)):
                continue
            nn.init.kaiming_normal_(module.weight, a=0, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                # fan_out = output channels x kernel volume (out_features for Linear).
                fan_out = module.weight.shape[0] * module.weight[0, 0].numel()
                bound = 1 / math.sqrt(fan_out)
                # Faithful to the reference, which passes (-bound, bound) to normal_ as if it were
                # uniform_: the biases are drawn with mean -bound and standard deviation bound.
                nn.init.normal_(module.bias, -bound, bound)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, F) features the head reads: the four blocks' output, flattened."""
        x = self.tail_batchnorm(x)
        x = self.block4(self.block3(self.block2(self.block1(x))))
        # flatten, not view: a channels_last_3d activation is not viewable as (N, -1).
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify a batch of crops.

        Args:
            x: (N, in_channels, I, R, C) crops in HU, any memory format.

        Returns:
            (logits, probabilities), both (N, 2); column 1 is "nodule". The logits feed the
            loss, the probabilities the metrics.
        """
        features = self.features(x)
        # The head runs in float32 even under autocast: bf16 logits keep 8 significant bits, so
        # dozens of candidates would tie at probability 1.0 and blur the top of the ranking
        # that FROC scores. It is one small matrix product.
        with torch.autocast(device_type=features.device.type, enabled=False):
            logits = self.head_linear(features.float())
            return logits, self.head_softmax(logits)


def nodule_probability(logits: torch.Tensor) -> torch.Tensor:
    """(N, 2) logits -> (N,) nodule probabilities, float64 on the CPU.

    Computed from the logit margin in float64, not taken from the model's float32 softmax: that
    reads every margin above ~17 as exactly 1, so the surest candidates would tie and the top of
    the ranking that the FROC reads would no longer be the model's.
    """
    logits = logits.detach().cpu().double()
    return torch.sigmoid(logits[:, 1] - logits[:, 0])


class LunaBnModel(LunaModel):
    """LunaModel with a BatchNorm3d after each convolution of blocks 2-4 (luna's default).

    Block 1 keeps the reference's plain convolutions: the input is already normalised by the
    tail BatchNorm, and batch norm over its 8 full-resolution channels costs about as much as
    the rest of the network (on a 2-core CPU in bf16 + channels-last, training runs at 75
    samples/s with it there and 122 without; ``benchmarks/bench_model.py``).
    """

    name = "luna_bn"

    def __init__(self, in_channels: int = 1, conv_channels: int = 8,
                 crop_shape_irc: Sequence[int] = CROP_SHAPE_IRC, batch_norm_from: int = 2) -> None:
        super().__init__(in_channels, conv_channels, crop_shape_irc, batch_norm_from=batch_norm_from)
        self._start_head_small()

    def _start_head_small(self) -> None:
        # The reference's fan_out init of the head assumes small, un-normalised features; after
        # batch norm the 1,152 features have unit scale and it would start with logits of
        # standard deviation ~30 (losses near 10). Start the head small instead.
        nn.init.normal_(self.head_linear.weight, std=0.01)
        nn.init.zeros_(self.head_linear.bias)


class LunaCentreModel(LunaBnModel):
    """``luna_bn`` plus a second, wider branch on the centre of the crop at full resolution.

    The misses of ``luna_bn`` are small and faint nodules, a few voxels across, which the main
    trunk sees through 8 and 16 channels before it halves the resolution twice. The label is
    about the candidate at the centre, so this branch spends its channels there: the central
    half of the crop on every axis (16 x 24 x 24 of 32 x 48 x 48, an eighth of the voxels) goes
    through three batch-normed blocks of 16, 32 and 64 channels, and the head reads both
    branches' features (the "multi-level context" of the LUNA16 false-positive-reduction
    literature, in its cheapest form).
    """

    name = "luna_centre"

    def __init__(self, in_channels: int = 1, conv_channels: int = 8,
                 crop_shape_irc: Sequence[int] = CROP_SHAPE_IRC, batch_norm_from: int = 2,
                 centre_channels: int = 16, context_pool: int = 1) -> None:
        super().__init__(in_channels, conv_channels, crop_shape_irc, batch_norm_from)
        if context_pool not in (1, 2):
            raise ValueError(f"context_pool must be 1 or 2, got {context_pool}")
        self._config["centre_channels"] = int(centre_channels)
        self._config["context_pool"] = int(context_pool)
        width = [in_channels, centre_channels, 2 * centre_channels, 4 * centre_channels]
        self.centre_blocks = nn.Sequential(*(LunaBlock(width[k], width[k + 1], batch_norm=True) for k in range(3)))
        size = self._config["crop_shape_irc"]
        centre_shape = [s // 2 // 2 ** 3 for s in size]
        if min(centre_shape) < 1:
            raise ValueError(f"crop_shape_irc {size} is too small for the centre branch")
        trunk_features = self.head_linear.in_features
        self.context_pool = nn.Identity()
        if context_pool == 2:
            # The trunk reads the whole crop averaged over 2x2x2 voxels; three blocks then reach
            # the grid that four reach at full resolution, so the fourth goes.
            self.context_pool = nn.AvgPool3d(2)
            self.block4 = nn.Identity()
            trunk_features = conv_channels * 2 ** (_NUM_BLOCKS - 2) * math.prod(s // 2 ** _NUM_BLOCKS for s in size)
        self.head_linear = nn.Linear(trunk_features + width[-1] * math.prod(centre_shape), 2)
        for module in self.centre_blocks.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, a=0, mode="fan_out", nonlinearity="relu")
        self._start_head_small()  # the head was rebuilt wider: start it small again

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's and the centre branch's features, flattened side by side."""
        x = self.tail_batchnorm(x)
        size = x.shape[-3:]
        centre = x[..., size[0] // 4: size[0] // 4 + size[0] // 2, size[1] // 4: size[1] // 4 + size[1] // 2,
                   size[2] // 4: size[2] // 4 + size[2] // 2]
        # A slice of a channels-last tensor is strided oddly; oneDNN wants it dense.
        if x.is_contiguous(memory_format=torch.channels_last_3d):
            centre = centre.contiguous(memory_format=torch.channels_last_3d)
        trunk = self.block4(self.block3(self.block2(self.block1(self.context_pool(x)))))
        return torch.cat([torch.flatten(trunk, 1), torch.flatten(self.centre_blocks(centre), 1)], dim=1)


class LunaTwoScaleModel(LunaCentreModel):
    """``luna_centre`` whose trunk reads the crop at half resolution (``context_pool=2``).

    The centre branch already sees the candidate at full resolution; what the trunk adds is
    context (a vessel going on, the pleura), which survives averaging 2x2x2 voxels. Its first
    block then convolves an eighth of the voxels, and that block was most of the cost; with
    an eighth of the voxels the trunk can afford the centre branch's widths (16, 32, 64).
    """

    name = "luna_twoscale"

    def __init__(self, in_channels: int = 1, conv_channels: int = 16,
                 crop_shape_irc: Sequence[int] = CROP_SHAPE_IRC, batch_norm_from: int = 2,
                 centre_channels: int = 16, context_pool: int = 2) -> None:
        super().__init__(in_channels, conv_channels, crop_shape_irc, batch_norm_from, centre_channels, context_pool)


CLASSIFIERS: dict[str, type[LunaModel]] = {
    "luna": LunaModel,
    "luna_bn": LunaBnModel,
    "luna_centre": LunaCentreModel,
    "luna_twoscale": LunaTwoScaleModel,
}

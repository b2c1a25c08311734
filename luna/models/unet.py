"""The segmentation network: a small 2D U-Net over axial slices (Ronneberger et al. 2015).

Its input is one slice with ``context`` slices above and below as channels (7 by default: depth
context at the cost of a 2D network), in HU; a BatchNorm on the input rescales HU as the
classifier's does. ``depth`` levels of two padded 3x3 convolutions (each followed by batch norm
and ReLU), ``channels`` wide at the first level and twice as wide at each level below; max-pool
down, transposed convolution up, skip connections by concatenation; a 1x1 convolution and a
sigmoid give one nodule probability per pixel. The output has the input's size for any input
whose sides are multiples of ``2 ** (depth - 1)`` (:meth:`UNet2d.pad_multiple`; pad others).
"""
from __future__ import annotations

import torch
from torch import nn


class _DoubleConv(nn.Sequential):
    """Two padded 3x3 convolutions, each with batch norm and ReLU (the norm makes a bias moot)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class UNet2d(nn.Module):
    """The U-Net; ``forward`` maps (N, 2 * context + 1, H, W) HU to (N, 1, H, W) probabilities.

    Args:
        context: slices above and below the one segmented (input channels: ``2 * context + 1``).
        depth: levels, the first at full resolution; each lower one halves H and W.
        channels: feature channels of the first level.
    """

    name = "unet2d"

    def __init__(self, context: int = 3, depth: int = 3, channels: int = 16) -> None:
        super().__init__()
        if context < 0 or depth < 1 or channels < 1:
            raise ValueError(f"need context >= 0, depth >= 1 and channels >= 1, got {context}, {depth}, {channels}")
        self._config = {"name": self.name, "context": int(context), "depth": int(depth), "channels": int(channels)}
        in_channels = 2 * context + 1
        widths = [channels * 2 ** level for level in range(depth)]
        self.input_batchnorm = nn.BatchNorm2d(in_channels)
        self.down = nn.ModuleList()
        for width in widths:
            self.down.append(_DoubleConv(in_channels, width))
            in_channels = width
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(widths[k + 1], widths[k], kernel_size=2, stride=2)
                                      for k in reversed(range(depth - 1)))
        self.up = nn.ModuleList(_DoubleConv(2 * widths[k], widths[k]) for k in reversed(range(depth - 1)))
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def config(self) -> dict:
        """What :func:`luna.models.registry.build_model` needs to rebuild this network."""
        return dict(self._config)

    @property
    def context(self) -> int:
        return self._config["context"]

    @property
    def pad_multiple(self) -> int:
        """H and W must be multiples of this for the output to have the input's size."""
        return 2 ** (self._config["depth"] - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Nodule probability per pixel, (N, 1, H, W), in float32 even under autocast."""
        x = self.input_batchnorm(x)
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips[:-1])):
            x = block(torch.cat([upsample(x), skip], dim=1))
        # The sigmoid in float32: bf16 keeps 8 bits, and Dice sums over thousands of pixels.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return torch.sigmoid(self.head(x.float()))


SEGMENTERS: dict[str, type[nn.Module]] = {"unet2d": UNet2d}

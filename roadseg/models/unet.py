"""The classic U-Net (Ronneberger et al., 2015) with BatchNorm and padded 3×3 convolutions.

Four down stages (max-pool then double conv) and four up stages (transposed conv, concatenation with
the matching encoder features, double conv), then a 1×1 head. With ``base_channels=64`` this is the
31 M-parameter reference network. Inputs of any size work: they are padded to a multiple of 16 and
the logits are cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Four 2× poolings: spatial sizes must be a multiple of this inside the network.
DOWNSAMPLING = 16


class DoubleConv(nn.Sequential):
    """(3×3 conv → BatchNorm → ReLU) × 2; the conv has no bias since BatchNorm adds one."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2×2 max-pool, then a double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """2× transposed conv halving the channels, concatenation with the skip, double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the bottom and right of ``x`` so H and W are multiples of ``multiple``.

    Zero rather than reflect padding: reflect fails on inputs smaller than the pad, and the
    network already sees zeros at every border through its ``padding=1`` convolutions.

    Shape:
        x: (N, C, H, W) -> (N, C, H', W') with H' = ceil(H / multiple) * multiple.

    Returns:
        The padded tensor and the original (H, W).
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x, (h, w)


class UNet(nn.Module):
    """Classic U-Net producing per-pixel class logits.

    Args:
        in_channels: Input image channels (3 for RGB).
        num_classes: Output classes (14 for merged BDD100k, 2 for KITTI road).
        base_channels: Width of the first stage; stage ``i`` has ``base_channels * 2**i``.

    Shape:
        input: (N, in_channels, H, W), any H and W.
        output: (N, num_classes, H, W) logits.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base_channels: int = 64) -> None:
        super().__init__()
        c = [base_channels * 2**i for i in range(5)]
        self.inc = DoubleConv(in_channels, c[0])
        self.down = nn.ModuleList(Down(c[i], c[i + 1]) for i in range(4))
        self.up = nn.ModuleList(Up(c[i + 1], c[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(c[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, DOWNSAMPLING)
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.up:
            y = up(y, skips.pop())
        return self.head(y)[..., :h, :w]

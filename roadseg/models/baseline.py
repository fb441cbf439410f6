"""A small fully convolutional encoder–decoder, the comparison point for the U-Net.

Three stride-2 conv stages down, three transposed-conv stages up, no skip connections: it shows
how much the U-Net's skips and depth buy. Inputs of any size work (padded to a multiple of 8).
"""

from __future__ import annotations

import torch
from torch import nn

from roadseg.models.unet import pad_to_multiple

DOWNSAMPLING = 8


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _up_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class BaselineNet(nn.Module):
    """Plain encoder–decoder without skip connections.

    Args:
        in_channels: Input image channels.
        num_classes: Output classes.
        base_channels: Width of the first stage (doubled at each of the three down stages).

    Shape:
        input: (N, in_channels, H, W), any H and W.
        output: (N, num_classes, H, W) logits.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base_channels: int = 16) -> None:
        super().__init__()
        c = base_channels
        self.encoder = nn.Sequential(
            _conv_bn_relu(in_channels, c),
            _conv_bn_relu(c, 2 * c, stride=2),
            _conv_bn_relu(2 * c, 4 * c, stride=2),
            _conv_bn_relu(4 * c, 8 * c, stride=2),
        )
        self.decoder = nn.Sequential(
            _up_bn_relu(8 * c, 4 * c),
            _up_bn_relu(4 * c, 2 * c),
            _up_bn_relu(2 * c, c),
            _conv_bn_relu(c, c),
        )
        self.head = nn.Conv2d(c, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, DOWNSAMPLING)
        return self.head(self.decoder(self.encoder(x)))[..., :h, :w]

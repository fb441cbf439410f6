"""A U-Net over the ImageNet-pretrained EfficientNet-Lite0 encoder (`roadseg.models.effnet_lite`):
the decoder upsamples the 1/32 map and joins the encoder's maps at 1/16, 1/8, 1/4 and 1/2 (skip
connections), then a last upsampling to full resolution. Inputs are ImageNet-normalised (the
spec's mean/std, `IMAGENET_MEAN`/`IMAGENET_STD`), as the encoder was trained.
"""

from __future__ import annotations

import torch
from torch import nn

from roadseg.models.effnet_lite import SKIP_CHANNELS, EfficientNetLite0, pretrained_encoder


class DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip (if any), two 3x3 conv + BN + ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c_in + c_skip, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else [2 * s for s in x.shape[-2:]]
        x = nn.functional.interpolate(x, size=size, mode="nearest")
        return self.conv(torch.cat([x, skip], dim=1) if skip is not None else x)


class UNetEffNetLite0(nn.Module):
    """U-Net with an EfficientNet-Lite0 encoder; decoder widths base*8, *4, *2, *1, *1 (at 1/16
    to full resolution; base 32 gives segmentation_models.pytorch's 256..32). The last two are
    not narrowed further: a head reading 4 channels (base 16 / 4) cannot tell 14 classes apart.

    Shape:
        x: (N, 3, H, W) -> logits (N, num_classes, H, W), any H, W (odd sizes too)
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 14, base_channels: int = 64,
        pretrained: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        if in_channels != 3:
            raise ValueError(
                f"the EfficientNet-Lite0 encoder takes RGB (3 channels), got {in_channels}"
            )
        if base_channels < 4:
            raise ValueError(f"base_channels must be at least 4, got {base_channels}")
        self.encoder = pretrained_encoder() if pretrained else EfficientNetLite0()
        del self.encoder._fc  # the ImageNet classifier: not part of the segmentation network
        widths = [base_channels * 8, base_channels * 4, base_channels * 2, base_channels,
                  base_channels]  # fmt: skip
        skips = [*reversed(SKIP_CHANNELS[:-1]), 0]  # 1/16, 1/8, 1/4, 1/2, then none
        c_in, blocks = SKIP_CHANNELS[-1], []
        for c_skip, c_out in zip(skips, widths, strict=True):
            blocks.append(DecoderBlock(c_in, c_skip, c_out))
            c_in = c_out
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c_in, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        *skips, y = self.encoder.features(x)
        for block, skip in zip(self.decoder, [*reversed(skips), None], strict=True):
            y = block(y, skip)
        if y.shape[-2:] != size:  # odd input sizes: the strided convolutions rounded up
            y = nn.functional.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return self.head(y)

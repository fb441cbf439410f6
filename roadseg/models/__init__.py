"""Segmentation networks, built by name::

model = build_model("unet", in_channels=3, num_classes=14, base_channels=64)
"""

from __future__ import annotations

from torch import nn

from roadseg.models.baseline import BaselineNet
from roadseg.models.effnet_lite import IMAGENET_MEAN, IMAGENET_STD
from roadseg.models.unet import UNet
from roadseg.models.unet_effnet import UNetEffNetLite0

MODELS: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "baseline": BaselineNet,
    "unet_effnet_lite0": UNetEffNetLite0,
}
# Models over an ImageNet-pretrained encoder: their inputs are normalised as the encoder was
# trained (mean, std), whatever the dataset's own statistics.
PRETRAINED_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "unet_effnet_lite0": (IMAGENET_MEAN, IMAGENET_STD),
}

__all__ = ["MODELS", "PRETRAINED_NORMALIZATION", "BaselineNet", "UNet", "UNetEffNetLite0",
           "build_model", "count_parameters"]  # fmt: skip


def build_model(
    name: str, *, in_channels: int, num_classes: int, base_channels: int, pretrained: bool = False
) -> nn.Module:
    """Build a segmentation network that maps (N, in_channels, H, W) to (N, num_classes, H, W) logits.
    `pretrained` loads the encoder's ImageNet weights (models in PRETRAINED_NORMALIZATION; the
    others have nothing to load and ignore it).

    Raises:
        ValueError: for an unknown name or a non-positive size.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    for arg, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("base_channels", base_channels),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    extra = {"pretrained": pretrained} if name in PRETRAINED_NORMALIZATION else {}
    return MODELS[name](
        in_channels=in_channels, num_classes=num_classes, base_channels=base_channels, **extra
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

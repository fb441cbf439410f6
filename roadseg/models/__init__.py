"""Segmentation networks, built by name::

model = build_model("unet", in_channels=3, num_classes=14, base_channels=64)
"""

from __future__ import annotations

from torch import nn

from roadseg.models.baseline import BaselineNet
from roadseg.models.unet import UNet

MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "baseline": BaselineNet}

__all__ = ["MODELS", "BaselineNet", "UNet", "build_model", "count_parameters"]


def build_model(name: str, *, in_channels: int, num_classes: int, base_channels: int) -> nn.Module:
    """Build a segmentation network that maps (N, in_channels, H, W) to (N, num_classes, H, W) logits.

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
    return MODELS[name](
        in_channels=in_channels, num_classes=num_classes, base_channels=base_channels
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

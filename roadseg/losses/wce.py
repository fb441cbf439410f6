"""Class-weighted cross-entropy (weights from ``class_stats.json``)."""

from __future__ import annotations

import torch
from torch import nn

from roadseg.losses._functional import weighted_cross_entropy


class WeightedCrossEntropyLoss(nn.Module):
    """Cross-entropy with per-class weights, averaged over valid pixels by their weights.

    Args:
        weight: (C,) class weights; None gives plain cross-entropy.
        ignore_index: Target value of pixels that contribute nothing.

    Shape:
        logits: (N, C, H, W); target: (N, H, W) long -> scalar.
    """

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        # A buffer so .to(device) moves it and it lands in the state dict.
        self.register_buffer(
            "weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return weighted_cross_entropy(logits, target, self.weight, self.ignore_index)

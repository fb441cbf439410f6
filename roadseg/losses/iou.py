"""Soft Jaccard (IoU) loss; the road-class IoU loss of the binary KITTI model."""

from __future__ import annotations

import torch
from torch import nn

from roadseg.losses._functional import soft_jaccard_loss


class IoULoss(nn.Module):
    """Soft Jaccard loss ``1 − (Σ p·y + s) / (Σp + Σy − Σ p·y + s)`` over softmax probabilities.

    Args:
        smooth: Additive smoothing ``s``; 0 gives the plain formula.
        ignore_index: Target value of pixels that contribute nothing.
        classes: Classes whose IoU is optimised; None means every class present in the batch.
            `build_loss` passes ``[1]`` for two-class models, so the KITTI road model
            optimises the road-class IoU.

    Shape:
        logits: (N, C, H, W); target: (N, H, W) long -> scalar.
    """

    def __init__(
        self, smooth: float = 0.0, ignore_index: int = 255, classes: list[int] | None = None
    ) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"IoU smooth must be >= 0, got {smooth}")
        self.smooth = smooth
        self.ignore_index = ignore_index
        self.classes = None if classes is None else list(classes)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_jaccard_loss(logits, target, self.smooth, self.ignore_index, self.classes)

"""Soft Dice loss and the Dice + cross-entropy combination."""

from __future__ import annotations

import torch
from torch import nn

from roadseg.losses._functional import soft_dice_loss, weighted_cross_entropy


class DiceLoss(nn.Module):
    """Multi-class soft Dice over softmax probabilities, valid pixels only.

    ``1 − mean_c (2·Σ p·y + s) / (Σp + Σy + s)``, summed over the whole batch, averaged over
    the classes present in the batch's ground truth.

    Args:
        smooth: Additive smoothing ``s`` (``loss.smooth`` in params).
        ignore_index: Target value of pixels that contribute nothing.

    Shape:
        logits: (N, C, H, W); target: (N, H, W) long -> scalar.
    """

    def __init__(self, smooth: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"Dice smooth must be >= 0, got {smooth}")
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(logits, target, self.smooth, self.ignore_index)


class DiceCELoss(nn.Module):
    """``dice_weight · Dice + ce_weight · CE``: Dice for region overlap, CE for stable gradients.

    Args:
        dice_weight: Weight of the Dice term (``loss.dice_weight``).
        ce_weight: Weight of the cross-entropy term (``loss.ce_weight``).
        smooth: Dice smoothing.
        weight: Optional (C,) class weights for the cross-entropy term.
        ignore_index: Target value of pixels that contribute nothing.

    Shape:
        logits: (N, C, H, W); target: (N, H, W) long -> scalar.
    """

    def __init__(
        self,
        dice_weight: float = 0.5,
        ce_weight: float = 0.5,
        smooth: float = 1.0,
        weight: torch.Tensor | None = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(
                f"dice_weight and ce_weight must be >= 0 and not both 0, "
                f"got {dice_weight} and {ce_weight}"
            )
        self.dice = DiceLoss(smooth, ignore_index)
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self.register_buffer(
            "weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = weighted_cross_entropy(logits, target, self.weight, self.ignore_index)
        return self.dice_weight * self.dice(logits, target) + self.ce_weight * ce

"""Online hard example mining (OHEM) cross-entropy."""

from __future__ import annotations

import torch
from torch import nn

from roadseg.losses._functional import ohem_cross_entropy


class OhemCrossEntropyLoss(nn.Module):
    """Mean cross-entropy over the ``top_k`` share of the hardest valid pixels in the batch.

    Easy pixels (large road and sky areas) dominate a plain mean; keeping only the hardest
    ones focuses the gradient on boundaries and rare classes, without class weights.

    Args:
        top_k: Share of valid pixels kept, in (0, 1]; 1 gives plain cross-entropy.
        ignore_index: Target value of pixels that contribute nothing.

    Shape:
        logits: (N, C, H, W); target: (N, H, W) long -> scalar.
    """

    def __init__(self, top_k: float = 0.25, ignore_index: int = 255) -> None:
        super().__init__()
        if not 0.0 < top_k <= 1.0:
            raise ValueError(f"OHEM top_k must be in (0, 1], got {top_k}")
        self.top_k = top_k
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ohem_cross_entropy(logits, target, self.top_k, self.ignore_index)

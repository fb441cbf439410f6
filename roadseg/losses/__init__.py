"""Segmentation losses, built from the ``loss`` section of params::

    loss_fn = build_loss(params.loss, num_classes=14, ignore_index=255, class_weights=weights)
    loss = loss_fn(logits, target)  # logits (N, C, H, W), target (N, H, W) long

All of them ignore pixels labelled ``ignore_index``; a batch with nothing but ignored pixels
gives a 0 loss that still back-propagates (zero gradients), never NaN.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from roadseg.losses.dice import DiceCELoss, DiceLoss
from roadseg.losses.iou import IoULoss
from roadseg.losses.ohem import OhemCrossEntropyLoss
from roadseg.losses.wce import WeightedCrossEntropyLoss

__all__ = [
    "LOSSES",
    "WEIGHTED_LOSSES",
    "DiceCELoss",
    "DiceLoss",
    "IoULoss",
    "OhemCrossEntropyLoss",
    "WeightedCrossEntropyLoss",
    "build_loss",
]


class _LossParams(Protocol):
    """The fields of `roadseg.config.LossParams` that `build_loss` reads."""

    name: str
    ohem_top_k: float
    dice_weight: float
    ce_weight: float
    smooth: float


def _wce(p: _LossParams, num_classes: int, ignore: int, w: torch.Tensor | None) -> nn.Module:
    if w is None:
        raise ValueError(
            "loss 'wce' needs class weights: pass class_weights (the 'weights' of "
            "class_stats.json, written by `roadseg data remap`)"
        )
    return WeightedCrossEntropyLoss(w, ignore)


def _ohem(p: _LossParams, num_classes: int, ignore: int, w: torch.Tensor | None) -> nn.Module:
    return OhemCrossEntropyLoss(p.ohem_top_k, ignore)


def _dice(p: _LossParams, num_classes: int, ignore: int, w: torch.Tensor | None) -> nn.Module:
    return DiceLoss(p.smooth, ignore)


def _dice_ce(p: _LossParams, num_classes: int, ignore: int, w: torch.Tensor | None) -> nn.Module:
    return DiceCELoss(p.dice_weight, p.ce_weight, p.smooth, w, ignore)


def _iou(p: _LossParams, num_classes: int, ignore: int, w: torch.Tensor | None) -> nn.Module:
    # Binary (KITTI road): optimise the road class only; background IoU is large and easy.
    return IoULoss(p.smooth, ignore, classes=[1] if num_classes == 2 else None)


# Names as in `roadseg.config.LossName` (the one list; a test keeps the two equal).
LOSSES: dict[str, Any] = {
    "wce": _wce,
    "ohem": _ohem,
    "dice": _dice,
    "dice_ce": _dice_ce,
    "iou": _iou,
}


# The losses that take class weights (`class_stats.json`): training computes them only for these.
WEIGHTED_LOSSES = ("wce", "dice_ce")


def build_loss(
    loss_params: _LossParams,
    *,
    num_classes: int,
    ignore_index: int,
    class_weights: torch.Tensor | None,
) -> nn.Module:
    """Build the loss named by ``loss_params.name``.

    Class weights are used by ``wce`` (required there: a ValueError without them, since a
    "weighted" loss silently running unweighted would mislabel the experiment) and by the
    cross-entropy term of ``dice_ce`` (optional). ``ohem``, ``dice`` and ``iou`` ignore them:
    mining and overlap losses already balance classes.

    Raises:
        ValueError: unknown loss name, missing weights for ``wce``, or weights of the wrong length.
    """
    name = loss_params.name
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
    if class_weights is not None:
        class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
        if class_weights.shape != (num_classes,):
            raise ValueError(
                f"class_weights has shape {tuple(class_weights.shape)}, expected ({num_classes},)"
            )
        if not bool(torch.isfinite(class_weights).all()) or bool((class_weights < 0).any()):
            raise ValueError(f"class_weights must be finite and >= 0, got {class_weights.tolist()}")
    return LOSSES[name](loss_params, num_classes, ignore_index, class_weights)

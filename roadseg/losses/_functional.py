"""Pure tensor math behind the loss classes; no state, no modules.

Every function takes raw logits (N, C, H, W) and an integer target (N, H, W) in which
``ignore_index`` marks pixels that contribute nothing. A batch with no valid pixel gives a zero
loss that is still attached to the graph (so ``backward()`` works and yields zero gradients)
instead of NaN. The maths runs in float32 even under bf16 autocast: sums over millions of
pixels lose too much precision in bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_EPS = 1e-7


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 4 or target.dim() != 3:
        raise ValueError(
            f"expected logits (N, C, H, W) and target (N, H, W), got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    n, _, h, w = logits.shape
    if target.shape != (n, h, w):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )


def zero_loss(logits: torch.Tensor) -> torch.Tensor:
    """A 0 loss connected to ``logits`` so backward() still runs (all-ignore batches)."""
    return logits.float().sum() * 0.0 + 0.0  # + 0.0 turns -0.0 into 0.0


def valid_one_hot(
    target: torch.Tensor, num_classes: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot encode ``target`` with ignored pixels all-zero.

    Shape:
        target: (N, H, W) -> one_hot (N, C, H, W) float, valid (N, 1, H, W) float.
    """
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    one_hot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()
    valid_f = valid.unsqueeze(1).float()
    return one_hot * valid_f, valid_f


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Cross-entropy averaged over valid pixels, each pixel weighted by its class weight.

    Same value as ``F.cross_entropy(..., weight=weight, ignore_index=ignore_index)`` (the sum of
    weighted pixel losses divided by the sum of the weights), but 0 instead of NaN when every
    pixel is ignored.

    Shape:
        logits: (N, C, H, W); target: (N, H, W) -> scalar.
    """
    _check(logits, target)
    logits = logits.float()
    target = target.long()
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=torch.float32)
    pixel = F.cross_entropy(
        logits, target, weight=weight, ignore_index=ignore_index, reduction="none"
    )
    valid = target != ignore_index
    if weight is None:
        denom = valid.sum().float()
    else:
        denom = torch.where(valid, weight[torch.where(valid, target, 0)], 0.0).sum()
    # An all-ignore batch gives 0 / eps = 0, still attached to the graph, with no host sync.
    return pixel.sum() / denom.clamp_min(_EPS)


def ohem_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, top_k: float, ignore_index: int = 255
) -> torch.Tensor:
    """Mean cross-entropy over the ``ceil(top_k * n_valid)`` hardest valid pixels.

    Shape:
        logits: (N, C, H, W); target: (N, H, W) -> scalar.
    """
    _check(logits, target)
    if not 0.0 < top_k <= 1.0:
        raise ValueError(f"top_k must be in (0, 1], got {top_k}")
    target = target.long()
    pixel = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    losses = pixel[target != ignore_index]
    if losses.numel() == 0:
        return zero_loss(logits)
    k = max(1, math.ceil(top_k * losses.numel()))
    return losses.topk(k, sorted=False).values.mean()


def _per_class_sums(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Σ(p·y), Σp and Σy per class over the valid pixels of the whole batch.

    Shape:
        logits: (N, C, H, W); target: (N, H, W) -> three (C,) tensors.
    """
    probs = logits.float().softmax(dim=1)
    one_hot, valid = valid_one_hot(target, logits.shape[1], ignore_index)
    probs = probs * valid
    dims = (0, 2, 3)
    return (probs * one_hot).sum(dims), probs.sum(dims), one_hot.sum(dims)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, with 1 where den == 0 (nothing predicted, nothing there: a perfect match)."""
    return torch.where(den > 0, num / den.clamp_min(_EPS), torch.ones_like(num))


def _mean_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; 0 (still on the graph) when the mask is empty.

    Masked sums rather than boolean indexing: no host-device sync on GPU.
    """
    mask = mask.float()
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, ignore_index: int = 255
) -> torch.Tensor:
    """1 − mean over classes of (2·Σ(p·y) + s) / (Σp + Σy + s), p = softmax(logits).

    Sums run over the valid pixels of the whole batch; the mean runs over the classes present in
    the batch's valid ground truth (the same convention as the metrics), so a class absent from a
    batch neither rewards nor punishes it — its false positives are still paid for through the
    present classes, whose probabilities sum with them to 1.

    Shape:
        logits: (N, C, H, W); target: (N, H, W) -> scalar.
    """
    _check(logits, target)
    inter, p_sum, y_sum = _per_class_sums(logits, target, ignore_index)
    dice = _ratio(2.0 * inter + smooth, p_sum + y_sum + smooth)
    return _mean_over(1.0 - dice, y_sum > 0)


def soft_jaccard_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    smooth: float = 0.0,
    ignore_index: int = 255,
    classes: list[int] | None = None,
) -> torch.Tensor:
    """1 − (Σ(p·y) + s) / (Σp + Σy − Σ(p·y) + s), p = softmax(logits), over valid pixels.

    With ``classes`` given (e.g. ``[1]`` for the KITTI road class) the mean runs over exactly
    those classes, present in the batch or not — an absent road class then pushes road
    probability down (with s > 0). Without it, the mean runs over the classes present in the
    batch's valid ground truth, as in `soft_dice_loss`.

    Shape:
        logits: (N, C, H, W); target: (N, H, W) -> scalar.
    """
    _check(logits, target)
    inter, p_sum, y_sum = _per_class_sums(logits, target, ignore_index)
    jaccard = _ratio(inter + smooth, p_sum + y_sum - inter + smooth)
    if classes is not None:
        return (1.0 - jaccard[classes]).mean()
    return _mean_over(1.0 - jaccard, y_sum > 0)

"""Segmentation metrics from one confusion matrix accumulated over a whole split.

The matrix is ``cm[truth, prediction]`` pixel counts over valid pixels (target != ignore
index), built with one ``torch.bincount``. Scores are stateless functions of the matrix, so a
split's matrix can be summed across batches, workers or DDP ranks (``all_reduce`` on
``ConfusionMatrix.matrix``) before any score is computed — averaging per-batch scores would
weight small and large images alike and is not what the BDD100k toolkit reports.

Convention for the means (mean accuracy, mIoU, mean Dice): they average over the classes
**present in the ground truth of the evaluated split** (row sum > 0), as the BDD100k official
evaluation does. A class that never occurs in the split has no defined recall or IoU; counting
it as 0 would punish a model for the split's contents. Its false positives still lower the IoU
and precision of the classes it was confused with.

The BDD100k toolkit (``scalabel.eval.sem_seg``) reports its own fields, which `segmentation_scores`
adds under explicit ``bdd100k_`` names so they are never mistaken for ours:

- its per-class "accuracy" ``Acc`` is ``diag / hist.sum(axis=0)`` with rows = ground truth, i.e.
  our *precision*, with 0 (not undefined) for a class never predicted; ``bdd100k_mAcc`` averages it
  over the classes present in the truth. Our ``mean_accuracy`` stays mean *recall* (torchmetrics,
  mmsegmentation and the original project's table);
- ``bdd100k_fwIoU`` is frequency-weighted IoU, sum over classes of IoU × (truth pixels / all);
- ``bdd100k_iou`` is our IoU with 0 where it is undefined; ``bdd100k_mIoU`` and ``bdd100k_pAcc``
  equal our ``miou`` and ``pixel_accuracy``.

All values are fractions in [0, 1]; the toolkit prints the same numbers × 100.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Count (truth, prediction) pairs over the pixels whose target is not ``ignore_index``.

    Args:
        pred: Predicted class ids (any integer dtype), same shape as ``target``.
        target: Ground-truth class ids; ``ignore_index`` marks pixels that are skipped.
        num_classes: Number of classes C.
        ignore_index: Target value to skip.

    Shape:
        pred, target: any shape, equal -> (C, C) int64, rows = truth, columns = prediction.

    Raises:
        ValueError: on mismatched shapes or class ids outside [0, C) (checked on valid pixels).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    valid = target != ignore_index
    target, pred = target[valid], pred[valid]
    if target.numel():
        lo = torch.minimum(target.min(), pred.min()).item()
        hi = torch.maximum(target.max(), pred.max()).item()
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"class ids must be in [0, {num_classes}) or {ignore_index} (ignore); "
                f"found values from {lo} to {hi}"
            )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


class ConfusionMatrix:
    """Running confusion matrix over a split, on the device of the first update.

    ``matrix`` is a plain int64 tensor: reduce it across DDP ranks with
    ``torch.distributed.all_reduce(cm.matrix)`` or combine instances with `merge`.

    Example::

        cm = ConfusionMatrix(14, ignore_index=255)
        for images, masks in loader:
            cm.update(model(images).argmax(1), masks)
        scores = cm.compute()  # segmentation_scores(cm.matrix)
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: Any = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` class ids (or (N, C, H, W) logits, argmax'ed) and ``target``."""
        if pred.dim() == target.dim() + 1 and pred.is_floating_point():
            pred = pred.argmax(dim=1)
        batch = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if self.matrix.device != batch.device:
            self.matrix = self.matrix.to(batch.device)
        self.matrix += batch

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix over the same classes (e.g. from another worker); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """`segmentation_scores` of the accumulated matrix."""
        return segmentation_scores(self.matrix, class_names)


def _div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den in float64, NaN where den == 0 (undefined, not zero)."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, float("nan")))


def _parts(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True positives, false positives and false negatives per class."""
    cm = cm.double()
    tp = cm.diagonal()
    return tp, cm.sum(0) - tp, cm.sum(1) - tp


def present_classes(cm: torch.Tensor) -> torch.Tensor:
    """(C,) bool: classes with at least one ground-truth pixel."""
    return cm.sum(1) > 0


def pixel_accuracy_score(cm: torch.Tensor) -> float:
    """Correct pixels / valid pixels; NaN for an empty matrix."""
    return float(_div(cm.diagonal().sum(), cm.sum()))


def recall_score(cm: torch.Tensor) -> torch.Tensor:
    """Per-class recall (class accuracy) TP / (TP + FN); NaN for classes absent from the truth."""
    tp, _, fn = _parts(cm)
    return _div(tp, tp + fn)


def precision_score(cm: torch.Tensor) -> torch.Tensor:
    """Per-class precision TP / (TP + FP); NaN for classes never predicted."""
    tp, fp, _ = _parts(cm)
    return _div(tp, tp + fp)


def iou_score(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU TP / (TP + FP + FN); NaN where the class is neither present nor predicted."""
    tp, fp, fn = _parts(cm)
    return _div(tp, tp + fp + fn)


def dice_score(cm: torch.Tensor) -> torch.Tensor:
    """Per-class Dice (F1) 2·TP / (2·TP + FP + FN); NaN where neither present nor predicted."""
    tp, fp, fn = _parts(cm)
    return _div(2 * tp, 2 * tp + fp + fn)


def _mean_present(values: torch.Tensor, present: torch.Tensor) -> float:
    if not bool(present.any()):
        return float("nan")
    return float(values[present].mean())


def mean_accuracy_score(cm: torch.Tensor) -> float:
    """Mean class recall over the classes present in the ground truth."""
    return _mean_present(recall_score(cm), present_classes(cm))


def mean_iou_score(cm: torch.Tensor) -> float:
    """mIoU over the classes present in the ground truth (BDD100k convention)."""
    return _mean_present(iou_score(cm), present_classes(cm))


def mean_dice_score(cm: torch.Tensor) -> float:
    """Mean Dice over the classes present in the ground truth."""
    return _mean_present(dice_score(cm), present_classes(cm))


def bdd100k_accuracy_score(cm: torch.Tensor) -> torch.Tensor:
    """The BDD100k toolkit's per-class "accuracy": TP / predicted pixels (our precision), with 0
    for a class never predicted (the toolkit replaces the NaN by 0)."""
    return torch.nan_to_num(precision_score(cm), nan=0.0)


def bdd100k_mean_accuracy_score(cm: torch.Tensor) -> float:
    """The toolkit's mAcc: `bdd100k_accuracy_score` averaged over the classes present in the truth."""
    return _mean_present(bdd100k_accuracy_score(cm), present_classes(cm))


def frequency_weighted_iou_score(cm: torch.Tensor) -> float:
    """The toolkit's fIoU: sum of IoU (0 where undefined) × share of truth pixels; NaN if empty."""
    total = cm.sum()
    if int(total) == 0:
        return float("nan")
    freq = cm.double().sum(1) / float(total)
    return float((torch.nan_to_num(iou_score(cm), nan=0.0) * freq).sum())


def _num(x: float) -> float | None:
    """JSON-safe float: NaN (undefined) becomes None."""
    return None if x != x else float(x)


def segmentation_scores(
    cm: torch.Tensor, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every score of a confusion matrix, JSON-ready.

    Means average over the classes present in the ground truth (see the module docstring);
    undefined values are None.

    Shape:
        cm: (C, C), rows = truth, columns = prediction.

    Returns:
        ``{"pixel_accuracy", "mean_accuracy", "miou", "mdice": float | None,
        "bdd100k_pAcc", "bdd100k_mIoU", "bdd100k_mAcc", "bdd100k_fwIoU": float | None,
        "per_class": [{"name", "iou", "dice", "precision", "recall", "present", "pixels",
        "bdd100k_iou", "bdd100k_acc"}]}`` (the ``bdd100k_`` fields: see the module docstring).
    """
    cm = cm.detach().cpu()
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got {tuple(cm.shape)}")
    n = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for a {n}-class confusion matrix")
    iou, dice = iou_score(cm), dice_score(cm)
    precision, recall = precision_score(cm), recall_score(cm)
    present = present_classes(cm)
    pixels = cm.sum(1)
    bdd_acc, bdd_iou = bdd100k_accuracy_score(cm), torch.nan_to_num(iou, nan=0.0)
    per_class = [
        {
            "name": names[i],
            "iou": _num(iou[i].item()),
            "dice": _num(dice[i].item()),
            "precision": _num(precision[i].item()),
            "recall": _num(recall[i].item()),
            "present": bool(present[i]),
            "pixels": int(pixels[i]),
            "bdd100k_iou": float(bdd_iou[i]),
            "bdd100k_acc": float(bdd_acc[i]),
        }
        for i in range(n)
    ]
    return {
        "pixel_accuracy": _num(pixel_accuracy_score(cm)),
        "mean_accuracy": _num(mean_accuracy_score(cm)),
        "miou": _num(mean_iou_score(cm)),
        "mdice": _num(mean_dice_score(cm)),
        "bdd100k_pAcc": _num(pixel_accuracy_score(cm)),
        "bdd100k_mIoU": _num(mean_iou_score(cm)),
        "bdd100k_mAcc": _num(bdd100k_mean_accuracy_score(cm)),
        "bdd100k_fwIoU": _num(frequency_weighted_iou_score(cm)),
        "per_class": per_class,
    }

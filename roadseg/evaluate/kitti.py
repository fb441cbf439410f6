"""KITTI Road measures of a binary road model on a split (`roadseg.metrics.kitti`), for evaluation.

`roadseg.evaluate.segmentation.evaluate_model` calls `kitti_model_scores` when `data.dataset` is
`kitti_road`; the scores land under `scores["kitti"]`, are logged as `<prefix>_kitti_<measure>`
(and `<prefix>_kitti_<measure>/<cat>`) and printed as one table row per category.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from roadseg.data.bdd100k import Sample, read_image
from roadseg.data.kitti import category_of
from roadseg.data.transforms import check_image
from roadseg.inference.predict import preprocess
from roadseg.metrics.kitti import ROAD, RoadScores
from roadseg.models.spec import ModelSpec

MEASURES = ("maxf", "ap", "precision", "recall", "fpr", "fnr")


@torch.no_grad()
def road_probabilities(
    model: nn.Module,
    images: Sequence[np.ndarray],
    spec: ModelSpec,
    device: torch.device | str | None = None,
) -> list[np.ndarray]:
    """Per-pixel road probability (softmax channel 1) at each input's own resolution.

    The same geometry as `roadseg.inference.predict.predict` (logits at spec.image_size, upsampled
    bilinearly, then soft-maxed), so thresholding at 0.5 gives its masks.

    Shape:
        images: N arrays (H_i, W_i, 3) uint8 -> N arrays (H_i, W_i) float32 in [0, 1].
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    images = [check_image(im) for im in images]
    logits = model(preprocess(images, spec).to(device)).float()
    out = []
    for im, lg in zip(images, logits, strict=True):
        up = F.interpolate(lg[None], size=im.shape[:2], mode="bilinear", align_corners=False)[0]
        out.append(up.softmax(dim=0)[ROAD].cpu().numpy())
    return out


def kitti_model_scores(
    model: nn.Module,
    spec: ModelSpec,
    samples: Sequence[Sample],
    read_label: Callable[[Path], np.ndarray],
    *,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    ignore_index: int = 255,
) -> dict[str, dict]:
    """MaxF, AP, precision, recall, FPR, FNR, overall and per category (from the file stems)."""
    if spec.num_classes != 2:
        raise ValueError(f"KITTI measures need a 2-class road model, got {spec.num_classes}")
    acc = RoadScores(ignore_index)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = [read_image(s.image) for s in chunk]
        for s, prob in zip(chunk, road_probabilities(model, images, spec, device), strict=True):
            category = category_of(s.stem)
            if not category:
                raise ValueError(f"{s.image}: name is not <um|umm|uu>_<number>")
            acc.update(category, prob, read_label(s.label))
    return acc.compute()


def flat_kitti_scores(kitti: dict[str, dict], prefix: str) -> dict[str, float]:
    """`val_kitti_maxf`, ... overall and `val_kitti_maxf/um`, ... per category (grouped by
    measure in MLflow, like `val_iou/road`); measures that are None are left out."""
    out = {}
    for group, scores in kitti.items():
        suffix = "" if group == "overall" else f"/{group}"
        for k in (*MEASURES, "threshold"):
            if scores.get(k) is not None:
                out[f"{prefix}_kitti_{k}{suffix}"] = scores[k]
    return out


def kitti_table(kitti: dict[str, dict]) -> Any:
    """A rich table: one row per category and overall, the measures in % (threshold as is)."""
    from rich.table import Table

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}"

    table = Table(title="KITTI Road (image space, %; at the MaxF threshold)")
    table.add_column("category")
    for col in ("MaxF", "AP", "Precision", "Recall", "FPR", "FNR", "Threshold"):
        table.add_column(col, justify="right")
    for group in (*(g for g in kitti if g != "overall"), "overall"):
        s = kitti[group]
        thr = "n/a" if s.get("threshold") is None else f"{s['threshold']:.3f}"
        table.add_row(group, *(pct(s.get(k)) for k in MEASURES), thr)
    return table

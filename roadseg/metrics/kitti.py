"""KITTI Road benchmark measures in image space, as its devkit computes them (`helper.py`).

The road probability is read at 8 bits (the devkit reads probability PNGs and divides by 255),
thresholds are k/255 for k = 0..255, and a pixel counts as road at threshold k when its value is
>= k. Void ground-truth pixels are not counted. Over those thresholds:

- MaxF: the maximum F-measure (beta = 1) of precision and recall;
- AP: Pascal VOC 11-point average precision, the max precision at recall >= 0, 0.1, ..., 1;
- precision, recall, FPR, FNR (and the threshold) at the MaxF operating point.

Counts are two 256-bin histograms (probabilities of road pixels, of not-road pixels), summed over
a split's images and per category (um, umm, uu), so the scores are those of the pooled pixels,
as the devkit pools them per category.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

CATEGORIES = ("um", "umm", "uu")
NOT_ROAD, ROAD = 0, 1


def quantize(prob: np.ndarray) -> np.ndarray:
    """Road probability in [0, 1] → uint8 0..255, as written to (and read from) a KITTI PNG."""
    prob = np.asarray(prob, dtype=np.float64)
    if prob.size and (np.nanmin(prob) < 0 or np.nanmax(prob) > 1 or np.isnan(prob).any()):
        raise ValueError("road probabilities must lie in [0, 1]")
    return np.rint(prob * 255).astype(np.uint8)


def road_histograms(prob: np.ndarray, truth: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Counts of 8-bit road probability values per ground-truth class.

    Shape:
        prob: (H, W) float in [0, 1] or uint8 0..255; truth: (H, W) {0, 1, ignore} →
        (2, 256) int64, row 0 not-road pixels, row 1 road pixels.
    """
    if prob.shape != truth.shape:
        raise ValueError(f"probability {prob.shape} and ground truth {truth.shape} differ")
    q = prob if prob.dtype == np.uint8 else quantize(prob)
    bad = np.setdiff1d(np.unique(truth), [NOT_ROAD, ROAD, ignore_index])
    if bad.size:
        raise ValueError(f"ground truth holds ids {bad.tolist()}; expected 0, 1 or {ignore_index}")
    return np.stack([np.bincount(q[truth == c], minlength=256) for c in (NOT_ROAD, ROAD)])


def maxf_score(hist: np.ndarray) -> dict[str, float | int | None]:
    """The devkit's measures from (2, 256) histograms (see the module docstring).

    Returns:
        maxf, ap, precision, recall, fpr, fnr, threshold (k/255 of the MaxF point), pos and neg
        (pixel counts); the measures are None when the ground truth holds no road pixel.
    """
    hist = np.asarray(hist, dtype=np.int64)
    neg_hist, pos_hist = hist
    pos, neg = int(pos_hist.sum()), int(neg_hist.sum())
    out: dict[str, float | int | None] = {"pos": pos, "neg": neg}
    if pos == 0:
        return out | dict.fromkeys(("maxf", "ap", "precision", "recall", "fpr", "fnr", "threshold"))
    # at threshold k: TP = road pixels with value >= k, FP = not-road pixels with value >= k
    tp = np.cumsum(pos_hist[::-1])[::-1].astype(np.float64)
    fp = np.cumsum(neg_hist[::-1])[::-1].astype(np.float64)
    recall = tp / pos
    precision = tp / (tp + fp + 1e-10)
    valid = ~((recall == 0) & (precision == 0))  # the devkit drops these thresholds
    r, p, idx = recall[valid], precision[valid], np.flatnonzero(valid)
    # np.arange(0, 1.1, 0.1), not linspace: the devkit's recall levels, float rounding included
    ap = np.mean([p[r >= level].max() for level in np.arange(0, 1.1, 0.1)])
    f = 2 * p * r / (p + r + 1e-10)
    best = int(np.argmax(f))  # the first (lowest) threshold on ties, as np.argmax in the devkit
    k = idx[best]
    return out | {
        "maxf": float(f[best]),
        "ap": float(ap),
        "precision": float(tp[k] / (tp[k] + fp[k])) if tp[k] + fp[k] else 0.0,
        "recall": float(recall[k]),
        "fpr": float(fp[k] / neg) if neg else 0.0,
        "fnr": float((pos - tp[k]) / pos),
        "threshold": k / 255.0,
    }


class RoadScores:
    """Histograms over a split, overall and per category; `compute()` gives the measures."""

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index
        self.hist = {c: np.zeros((2, 256), np.int64) for c in CATEGORIES}

    def update(self, category: str, prob: np.ndarray, truth: np.ndarray) -> None:
        if category not in self.hist:
            raise ValueError(f"unknown KITTI category {category!r}; expected one of {CATEGORIES}")
        self.hist[category] += road_histograms(prob, truth, self.ignore_index)

    def compute(self) -> dict[str, dict]:
        """{"overall": measures, "um": ..., "umm": ..., "uu": ...} (categories with images)."""
        seen = [c for c in CATEGORIES if self.hist[c].any()]
        out = {"overall": maxf_score(sum((self.hist[c] for c in CATEGORIES), np.zeros((2, 256))))}
        return out | {c: maxf_score(self.hist[c]) for c in seen}


def road_scores(
    items: Iterable[tuple[str, np.ndarray, np.ndarray]], ignore_index: int = 255
) -> dict[str, dict]:
    """Measures of (category, road probability, ground truth) triples; see `RoadScores`."""
    acc = RoadScores(ignore_index)
    for category, prob, truth in items:
        acc.update(category, prob, truth)
    return acc.compute()

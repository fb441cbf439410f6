"""Monitoring features of one image: what the service logs for every served image (never the
pixels) and what the reference profile holds for the training images.

Only numpy: the service computes these per request without importing pandas or Evidently;
`roadseg.monitor.drift` compares their distributions. The log itself is `roadseg.monitor.log.MonitorLog`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Rec. 601 luma weights, in thousandths: the same "brightness" the eye (and most dashcam ISPs)
# use. Luma is computed in integers (0..255000), exact, from the uint8 pixels.
_LUMA_MILLI = (299, 587, 114)
_LUMA_SCALE = 255.0 * 1000.0

IMAGE_FEATURES = (
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
    "mean_r",
    "mean_g",
    "mean_b",
)
# Features are computed on a strided grid whose long side is at most this (1280x720 -> every 3rd
# pixel, 427x240): the same working scale for reference and served images, ~2 ms a frame at one
# thread. Changing it changes sharpness (a scale-dependent Laplacian): stored reference
# profiles would then no longer match served rows, so it stays at the scale they were built at.
FEATURE_MAX_SIDE = 512


def share_column(class_name: str) -> str:
    """Feature name of a predicted class share: 'traffic light' -> 'share_traffic_light'."""
    safe = "".join(c if c.isalnum() else "_" for c in class_name.lower()).strip("_")
    return f"share_{safe}"


def _shares_from(
    prediction: Any, class_names: Sequence[str] | None
) -> tuple[dict[str, float], float | None]:
    """Class shares and mean confidence from a Prediction-like object, a dict or softmax probs."""
    if prediction is None:
        return {}, None
    if isinstance(prediction, np.ndarray) or hasattr(prediction, "detach"):
        probs = np.asarray(
            prediction.detach().cpu() if hasattr(prediction, "detach") else prediction
        )
        if probs.ndim != 3:
            raise ValueError(f"probs must be (C, H, W) softmax scores, got shape {probs.shape}")
        top = probs.argmax(0)
        counts = np.bincount(top.ravel(), minlength=probs.shape[0]) / top.size
        names = class_names or [str(i) for i in range(probs.shape[0])]
        return dict(zip(names, counts.tolist(), strict=True)), float(probs.max(0).mean())
    get = (
        prediction.get
        if isinstance(prediction, Mapping)
        else lambda k: getattr(prediction, k, None)
    )
    shares = get("class_shares")
    if shares is None and get("mask") is not None and class_names:
        mask = np.asarray(get("mask"))
        counts = np.bincount(mask.ravel(), minlength=len(class_names))[: len(class_names)]
        shares = (counts / max(mask.size, 1)).tolist()
    if shares is None:
        shares = {}
    if not isinstance(shares, Mapping):
        names = class_names or [str(i) for i in range(len(shares))]
        shares = dict(zip(names, shares, strict=True))
    conf = get("confidence")
    return {str(k): float(v) for k, v in shares.items()}, None if conf is None else float(conf)


def feature_grid(image: np.ndarray) -> np.ndarray:
    """The pixels the image features are computed from: a small uint8 copy (strided, long side
    at most `FEATURE_MAX_SIDE`); cheap to take on the request path, the image can then go."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 RGB, got shape {img.shape}")
    if img.shape[0] < 3 or img.shape[1] < 3:
        raise ValueError(f"image is too small for features: {img.shape[1]}x{img.shape[0]}")
    stride = max(1, -(-max(img.shape[:2]) // FEATURE_MAX_SIDE))
    return np.ascontiguousarray(img[::stride, ::stride], dtype=np.uint8)


def grid_features(
    grid: np.ndarray, prediction: Any = None, *, class_names: Sequence[str] | None = None
) -> dict[str, float]:
    """`image_features` of a `feature_grid` (the service takes the grid on the request path and
    computes these off it): integer sums of its uint8 pixels, then the prediction's shares."""
    feats = _pixel_features(grid)
    shares, confidence = _shares_from(prediction, class_names)
    for name, share in shares.items():
        feats[share_column(name)] = float(share)
    if confidence is not None:
        feats["confidence"] = confidence
    return feats


def _pixel_features(grid: np.ndarray) -> dict[str, float]:
    # Channel planes: numpy reduces contiguous planes ~10x faster than the 3-wide pixel axis.
    r, g, b = np.moveaxis(grid, 2, 0).astype(np.int32)
    n = r.size
    luma = _LUMA_MILLI[0] * r + _LUMA_MILLI[1] * g + _LUMA_MILLI[2] * b  # 0..255000, exact
    mean_luma = float(luma.sum(dtype=np.int64)) / n
    var_luma = float(np.square(luma, dtype=np.int64).sum()) / n - mean_luma**2
    cmax = np.maximum(np.maximum(r, g), b)
    chroma = cmax - np.minimum(np.minimum(r, g), b)
    saturation = np.divide(chroma, cmax, out=np.zeros(cmax.shape), where=cmax > 0)
    lap = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
    lap_mean = float(lap.sum(dtype=np.int64)) / lap.size
    lap_var = float(np.square(lap, dtype=np.int64).sum()) / lap.size - lap_mean**2
    return {
        "brightness": mean_luma / _LUMA_SCALE,
        "contrast": float(np.sqrt(max(var_luma, 0.0))) / _LUMA_SCALE,
        "saturation": float(saturation.sum()) / n,
        "sharpness": max(lap_var, 0.0) / _LUMA_SCALE**2 * 1e3,
        "mean_r": float(r.sum(dtype=np.int64)) / (255.0 * n),
        "mean_g": float(g.sum(dtype=np.int64)) / (255.0 * n),
        "mean_b": float(b.sum(dtype=np.int64)) / (255.0 * n),
    }


def image_features(
    image: np.ndarray,
    prediction: Any = None,
    *,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Cheap, interpretable features of one image (and optionally of its prediction).

    Args:
        image: RGB uint8 image, HxWx3.
        prediction: None; a `roadseg.inference.predict.Prediction` (or mapping) with `class_shares`
            (dict name -> share, or a list in class order) and `confidence`; or softmax
            probabilities (C, H, W) as ndarray/tensor.
        class_names: names for list-valued shares or probability channels.

    Returns:
        brightness, contrast (RMS of luma), saturation (HSV), sharpness (variance of the
        4-neighbour Laplacian of luma), mean_r/g/b, all on a 0-1 scale except sharpness
        (luma in 0-1 units squared x 1e3), computed on `feature_grid` (every k-th pixel, long
        side at most `FEATURE_MAX_SIDE`); plus `share_<class>` per class and `confidence`
        (mean max-softmax) when a prediction is given.

    Shape:
        image: (H, W, 3) uint8.
    """
    return grid_features(feature_grid(image), prediction, class_names=class_names)

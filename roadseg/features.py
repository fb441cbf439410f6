"""Monitoring features of one image: what the service logs for every served image (never the
pixels) and what the reference profile holds for the training images.

Only numpy: the service computes these per request without importing pandas or Evidently;
`roadseg.drift` compares their distributions. The log itself is `roadseg.monitoring.MonitorLog`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Rec. 601 luma weights: the same "brightness" the eye (and most dashcam ISPs) use.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

IMAGE_FEATURES = (
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
    "mean_r",
    "mean_g",
    "mean_b",
)
# Features are computed on a strided view whose long side is at most this: ~10x faster on
# 1280x720 frames, and the same working scale for reference and served images.
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


def image_features(
    image: np.ndarray,
    prediction: Any = None,
    *,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Cheap, interpretable features of one image (and optionally of its prediction).

    Args:
        image: RGB uint8 image, HxWx3.
        prediction: None; a `roadseg.serving.Prediction` (or mapping) with `class_shares`
            (dict name -> share, or a list in class order) and `confidence`; or softmax
            probabilities (C, H, W) as ndarray/tensor.
        class_names: names for list-valued shares or probability channels.

    Returns:
        brightness, contrast (RMS of luma), saturation (HSV), sharpness (variance of the
        4-neighbour Laplacian of luma), mean_r/g/b, all on a 0-1 scale except sharpness
        (luma in 0-1 units squared x 1e3), computed on a strided view with a long side of at
        most `FEATURE_MAX_SIDE`; plus `share_<class>` per class and `confidence`
        (mean max-softmax) when a prediction is given.

    Shape:
        image: (H, W, 3) uint8.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 RGB, got shape {img.shape}")
    if img.shape[0] < 3 or img.shape[1] < 3:
        raise ValueError(f"image is too small for features: {img.shape[1]}x{img.shape[0]}")
    stride = max(1, -(-max(img.shape[:2]) // FEATURE_MAX_SIDE))
    rgb = img[::stride, ::stride].astype(np.float32) * (1.0 / 255.0)
    luma = rgb @ _LUMA
    channel_means = rgb.reshape(-1, 3).mean(0)
    cmax, cmin = rgb.max(2), rgb.min(2)
    saturation = np.divide(cmax - cmin, cmax, out=np.zeros_like(cmax), where=cmax > 1e-6)
    lap = (
        luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * luma[1:-1, 1:-1]
    )
    feats = {
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "saturation": float(saturation.mean()),
        "sharpness": float(lap.var() * 1e3),
        "mean_r": float(channel_means[0]),
        "mean_g": float(channel_means[1]),
        "mean_b": float(channel_means[2]),
    }
    shares, confidence = _shares_from(prediction, class_names)
    for name, share in shares.items():
        feats[share_column(name)] = float(share)
    if confidence is not None:
        feats["confidence"] = confidence
    return feats

"""Pre- and post-processing shared by training, evaluation and serving.

One module so that what the network sees when it is evaluated and when it is served cannot drift
apart: images are resized to the model's training size and normalised here (`preprocess`), and
logits are upsampled back to each input's resolution and turned into masks here (`predict`).

    spec = ModelSpec.from_params(params, mean=(0.4, 0.4, 0.4), std=(0.25, 0.25, 0.25))
    preds = predict(model, [image], spec)          # image: RGB uint8 (H, W, 3)
    png = encode_png(overlay(image, preds[0].mask, spec.colors))  # roadseg.inference.render

The transforms are `roadseg.data.transforms`, the spec `roadseg.models.spec`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from roadseg.data.transforms import check_image, normalize, resize_image
from roadseg.inference.upsampling import (
    Grid,
    argmax_mask,
    class_probability,
    first_argmax,
    sampled_confidence,
)
from roadseg.models.spec import ModelSpec


class Prediction:
    """One image's prediction at the image's own resolution: mask (H, W) uint8 class ids;
    confidence, the mean over pixels of the max softmax (estimated, `sampled_confidence`);
    class_shares, class name -> share of pixels; road_probability, softmax of the class "road"
    scaled to 0-255, (H, W) uint8, None without such a class (the KITTI server's `/upload`
    answer), given as an array or a callable that computes it on first access."""

    __slots__ = ("_road", "class_shares", "confidence", "mask")

    def __init__(
        self,
        mask: np.ndarray,
        confidence: float,
        class_shares: dict[str, float],
        road_probability: np.ndarray | Callable[[], np.ndarray] | None = None,
    ) -> None:
        self.mask = mask
        self.confidence = confidence
        self.class_shares = class_shares
        self._road = road_probability

    @property
    def road_probability(self) -> np.ndarray | None:
        if callable(self._road):
            self._road = self._road()  # two threads racing here only compute it twice
        return self._road


def prepare(image: np.ndarray, spec: ModelSpec) -> torch.Tensor:
    """One image's network input: resized to the training size and normalised, (3, H, W) float32.
    The service runs this in the request's own thread, off the inference thread."""
    return normalize(resize_image(check_image(image), spec.image_size), spec.mean, spec.std)


def preprocess(images: Sequence[np.ndarray], spec: ModelSpec) -> torch.Tensor:
    """Resize each image to the training size and normalise.

    Shape:
        images: N arrays (H_i, W_i, 3) uint8 -> (N, 3, H, W) float32 with (H, W) = spec.image_size.
    """
    if len(images) == 0:
        raise ValueError("preprocess needs at least one image")
    return torch.stack([prepare(im, spec) for im in images])


@torch.no_grad()
def forward(model: torch.nn.Module, x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Logits of a prepared batch (N, 3, H, W), as float32 on the CPU: (N, C, H, W)."""
    return model(x.to(device)).float().cpu()


def postprocess(lg: torch.Tensor, h: int, w: int, spec: ModelSpec) -> Prediction:
    """Mask, confidence, class shares and road probability of one (C, h_in, w_in) logit map at (h, w).

    The mask equals the argmax (first on ties) of the logits upsampled with `F.interpolate`
    (bilinear, align_corners=False), interpolating only in mixed cells (`argmax_mask`);
    the confidence is estimated (`sampled_confidence`). The road probability is computed on
    first access from a copy of the logits, or now when the output is no larger than them, so
    at most C x 4 bytes are kept per output pixel.
    """
    g = Grid(lg, h, w)
    mask, counts = argmax_mask(g, first_argmax(lg), spec.num_classes)
    shares = (counts / counts.sum()).tolist()
    road = None
    if "road" in spec.class_names:
        idx = spec.class_names.index("road")
        # a copy: a view would keep the whole batch's logits alive
        road = functools.partial(class_probability, lg.clone(), h, w, idx)
        if h * w <= g.h_in * g.w_in:
            road = road()
    return Prediction(
        mask=mask,
        confidence=sampled_confidence(g),
        class_shares=dict(zip(spec.class_names, shares, strict=True)),
        road_probability=road,
    )


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    spec: ModelSpec,
    device: torch.device | str | None = None,
    batch_size: int = 8,
) -> list[Prediction]:
    """Masks at each input's own resolution.

    Logits are computed at spec.image_size; each mask is the argmax of the logits upsampled
    bilinearly to the input's (H, W) (see `postprocess`), so evaluation and serving score the
    same pixels.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    out: list[Prediction] = []
    for start in range(0, len(images), batch_size):
        chunk = [check_image(im) for im in images[start : start + batch_size]]
        logits = forward(model, preprocess(chunk, spec), device)
        for im, lg in zip(chunk, logits, strict=True):
            out.append(postprocess(lg, im.shape[0], im.shape[1], spec))
    return out

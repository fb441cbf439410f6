"""Pre/post-processing shared by evaluation and serving (roadseg.inference.predict)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from roadseg.data.transforms import resize_mask
from roadseg.inference.predict import predict, preprocess
from roadseg.inference.render import colorize, encode_png, overlay
from roadseg.models.spec import ModelSpec


@pytest.fixture
def spec(params) -> ModelSpec:
    return ModelSpec.from_params(params, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class _ConstantLogits(torch.nn.Module):
    """Logits that favour class 2 on the left half and class 0 on the right half."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out = torch.zeros(n, self.num_classes, h, w)
        out[:, 2, :, : w // 2] = 5.0
        out[:, 0, :, w // 2 :] = 5.0
        return out + 0 * self.dummy


def test_spec_round_trips_through_a_dict(spec: ModelSpec) -> None:
    d = spec.to_dict()
    assert ModelSpec.from_dict(d) == spec
    assert d["image_size"] == list(spec.image_size)
    with pytest.raises(ValueError, match="missing"):
        ModelSpec.from_dict({k: v for k, v in d.items() if k != "mean"})


def test_spec_rejects_inconsistent_classes(spec: ModelSpec) -> None:
    d = spec.to_dict() | {"num_classes": 3}
    with pytest.raises(ValueError, match="classes"):
        ModelSpec.from_dict(d)


def test_preprocess_resizes_and_normalises(spec: ModelSpec) -> None:
    images = [np.full((50, 70, 3), 255, np.uint8), np.zeros((30, 20, 3), np.uint8)]
    x = preprocess(images, spec)
    assert x.shape == (2, 3, *spec.image_size) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.full_like(x[0], (1 - 0.5) / 0.25))
    assert torch.allclose(x[1], torch.full_like(x[1], (0 - 0.5) / 0.25))


def test_preprocess_rejects_bad_input(spec: ModelSpec) -> None:
    with pytest.raises(ValueError, match="uint8"):
        preprocess([np.zeros((8, 8, 3), np.float32)], spec)
    with pytest.raises(ValueError, match="shape"):
        preprocess([np.zeros((8, 8, 5), np.uint8)], spec)
    with pytest.raises(ValueError, match="at least one"):
        preprocess([], spec)


def test_predict_returns_masks_at_input_resolution(spec: ModelSpec) -> None:
    model = _ConstantLogits(spec.num_classes)
    images = [np.zeros((41, 64, 3), np.uint8), np.zeros((720, 1280, 3), np.uint8)]
    preds = predict(model, images, spec, batch_size=1)
    for im, p in zip(images, preds, strict=True):
        assert p.mask.shape == im.shape[:2] and p.mask.dtype == np.uint8
        assert set(np.unique(p.mask)) == {0, 2}
        assert p.class_shares["building"] == pytest.approx(0.5, abs=0.05)
        assert sum(p.class_shares.values()) == pytest.approx(1.0)
        assert 0.9 < p.confidence <= 1.0


def test_colorize_overlay_and_png(spec: ModelSpec) -> None:
    mask = np.array([[0, 1], [255, 13]], np.uint8)
    rgb = colorize(mask, spec.colors)
    assert rgb[0, 0].tolist() == list(spec.colors[0])
    assert rgb[1, 0].tolist() == [0, 0, 0]
    image = np.full((2, 2, 3), 100, np.uint8)
    assert (overlay(image, mask, spec.colors, alpha=0.0) == image).all()
    assert (overlay(image, mask, spec.colors, alpha=1.0) == rgb).all()
    with pytest.raises(ValueError, match="size"):
        overlay(np.zeros((3, 3, 3), np.uint8), mask, spec.colors)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(rgb))))
    assert (decoded == rgb).all()


def test_resize_mask_keeps_ids() -> None:
    mask = np.random.default_rng(0).choice([0, 3, 255], size=(37, 53)).astype(np.uint8)
    out = resize_mask(mask, (100, 120))
    assert set(np.unique(out)) <= {0, 3, 255}

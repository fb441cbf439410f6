"""Tiled post-processing (`roadseg.serving._postprocess`) equals the full-resolution reference.

The reference is the straightforward computation: upsample all logits bilinearly with
`F.interpolate`, softmax, max. Sizes cover up- and down-sampling, 1-pixel sides, extreme aspect
ratios, and tiny tiles (so rows and columns are both split into many tiles).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from roadseg import serving
from roadseg.serving import ModelSpec, _postprocess

NAMES = ("road", "sidewalk", "car", "sky", "other")


def _spec(names=NAMES) -> ModelSpec:
    return ModelSpec(
        model_name="unet",
        num_classes=len(names),
        in_channels=3,
        base_channels=4,
        image_size=(6, 10),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        class_names=names,
        colors=tuple((i, i, i) for i in range(len(names))),
    )


def _reference(lg: torch.Tensor, h: int, w: int):
    up = F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    probs = up.softmax(dim=0)
    conf, mask = probs.max(dim=0)
    road = probs[0].mul(255.0).round().to(torch.uint8)
    return mask.numpy(), float(conf.double().mean()), road.numpy()


SIZES = [(6, 10), (720, 1280), (1, 1), (2, 2), (1, 333), (257, 1), (3, 7), (45, 37)]


@pytest.mark.parametrize("tile", [2**22, 37])
@pytest.mark.parametrize("size", SIZES)
def test_tiled_equals_full_resolution_softmax(monkeypatch, size, tile):
    if tile < 1000 and size[0] * size[1] > 10_000:
        size = (97, 131)  # tiny tiles on a large image would take minutes of Python loops
    monkeypatch.setattr(serving, "TILE_ELEMENTS", tile)
    spec = _spec()
    # Scaled-up random logits: near-ties are rare, so masks must agree almost everywhere.
    lg = torch.randn(len(NAMES), 6, 10, generator=torch.Generator().manual_seed(1)) * 4
    h, w = size
    p = _postprocess(lg.clone(), h, w, spec)
    mask, conf, road = _reference(lg, h, w)
    assert p.mask.shape == (h, w) and p.mask.dtype == np.uint8
    assert (p.mask != mask).mean() <= 1e-4
    assert p.confidence == pytest.approx(conf, abs=1e-5)
    assert np.abs(p.road_probability.astype(int) - road.astype(int)).max() <= 1
    counts = np.bincount(p.mask.ravel(), minlength=len(NAMES)) / (h * w)
    assert [p.class_shares[n] for n in NAMES] == pytest.approx(counts.tolist())


def test_hand_computed_two_pixel_logits():
    """A 1x2 logit map upsampled to 1x4: weights by hand, softmax by hand."""
    spec = _spec(("road", "sky"))
    # road logit 0 then 2; sky logit 1 then 1 -> upsampled road logits: 0, 0.5, 1.5, 2
    lg = torch.tensor([[[0.0, 2.0]], [[1.0, 1.0]]])
    p = _postprocess(lg, 1, 4, spec)
    road_logit = np.array([0.0, 0.5, 1.5, 2.0])
    p_road = 1 / (1 + np.exp(1.0 - road_logit))
    assert p.mask.tolist() == [[1, 1, 0, 0]]
    assert p.confidence == pytest.approx(np.maximum(p_road, 1 - p_road).mean(), abs=1e-6)
    assert p.road_probability.tolist() == [np.round(p_road * 255).astype(int).tolist()]
    assert p.class_shares == {"road": 0.5, "sky": 0.5}


def test_without_a_road_class_no_road_probability():
    spec = _spec(("sky", "car"))
    p = _postprocess(torch.zeros(2, 3, 3), 5, 5, spec)
    assert p.road_probability is None
    assert p.confidence == pytest.approx(0.5)
    assert p.mask.tolist() == [[0] * 5] * 5  # ties go to the first class, as torch.max does

"""`roadseg.inference.predict.postprocess` (through `roadseg.inference.upsampling`) equals the full-resolution reference.

The reference is the straightforward computation: upsample all logits bilinearly with
`F.interpolate` (align_corners=False), softmax, max. Masks must agree on every pixel except
near-ties of the reference (where float rounding may pick either class); the road probability must
equal the full computation; the confidence, estimated on a grid of pixels, must be within
`CONF_TOL`. Sizes cover up- and down-sampling, 1-pixel sides and extreme aspect ratios; tiny tiles
split rows and columns into many pieces.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from roadseg.inference import upsampling
from roadseg.inference.predict import postprocess
from roadseg.models.spec import ModelSpec

NAMES = ("road", "sidewalk", "car", "sky", "other")
CONF_TOL = 0.01  # the documented accuracy of the sampled confidence (monitoring only)
TIE = 1e-5  # reference top-2 gap under which either class is a correct answer


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


def _upsampled(lg: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)[0]


def _reference(lg: torch.Tensor, h: int, w: int):
    probs = _upsampled(lg, h, w).softmax(dim=0)
    conf, mask = probs.max(dim=0)
    road = probs[0].mul(255.0).round().to(torch.uint8)
    return mask.numpy(), float(conf.double().mean()), road.numpy()


def random_logits(h_in: int, w_in: int, seed: int = 1) -> torch.Tensor:
    # Scaled-up noise: every class wins somewhere, most cells mix classes.
    return torch.randn(len(NAMES), h_in, w_in, generator=torch.Generator().manual_seed(seed)) * 4


def structured_logits(h_in: int, w_in: int) -> torch.Tensor:
    """Smooth class regions with straight and curved boundaries, like a street scene's logits."""
    y = torch.linspace(0, 1, h_in).view(-1, 1)
    x = torch.linspace(0, 1, w_in).view(1, -1)
    return torch.stack(
        [
            8 * (y - 0.6) + 0 * x,  # road: bottom
            3 - 20 * ((x - 0.15) ** 2 + (y - 0.7) ** 2),  # sidewalk: a blob on the left
            2 - 30 * ((x - 0.7) ** 2 + 4 * (y - 0.55) ** 2),  # car: an ellipse
            6 * (0.35 - y) + torch.sin(12 * x),  # sky: top, wavy horizon
            0.5 + 0 * x * y,  # other: the rest
        ]
    )


def assert_masks_match(mask: np.ndarray, lg: torch.Tensor, h: int, w: int) -> None:
    """Equal to the reference argmax wherever the reference is not a near-tie."""
    up = _upsampled(lg, h, w)
    want = up.argmax(dim=0).numpy()
    diff = mask != want
    if diff.any():
        top = up.amax(dim=0).numpy()[diff]
        ours = np.take_along_axis(up.numpy(), mask[None].astype(np.int64), 0)[0][diff]
        assert np.all(top - ours <= TIE * np.maximum(1.0, np.abs(top))), (
            f"{diff.sum()} pixels differ from the bilinear argmax, not at ties"
        )


SIZES = [(6, 10), (720, 1280), (1, 1), (2, 2), (1, 333), (257, 1), (3, 7), (45, 37)]
SIZES += [(3, 20000), (20000, 3)]
LOGITS = {"random6x10": (random_logits, 6, 10), "random24x40": (random_logits, 24, 40)}
LOGITS["structured48x80"] = (structured_logits, 48, 80)


@pytest.mark.parametrize("source", sorted(LOGITS))
@pytest.mark.parametrize("size", SIZES)
def test_equals_full_resolution_bilinear(source, size):
    make, h_in, w_in = LOGITS[source]
    lg = make(h_in, w_in)
    h, w = size
    p = postprocess(lg.clone(), h, w, _spec())
    mask, conf, road = _reference(lg, h, w)
    assert p.mask.shape == (h, w) and p.mask.dtype == np.uint8
    assert_masks_match(p.mask, lg, h, w)
    assert (p.mask != mask).mean() <= 1e-4
    assert p.confidence == pytest.approx(conf, abs=CONF_TOL)
    assert np.abs(p.road_probability.astype(int) - road.astype(int)).max() <= 1
    counts = np.bincount(p.mask.ravel(), minlength=len(NAMES)) / (h * w)
    assert [p.class_shares[n] for n in NAMES] == pytest.approx(counts.tolist())


@pytest.mark.parametrize("source", sorted(LOGITS))
def test_tiny_tiles(monkeypatch, source):
    monkeypatch.setattr(upsampling, "TILE_ELEMENTS", 37)
    make, h_in, w_in = LOGITS[source]
    lg = make(h_in, w_in)
    p = postprocess(lg.clone(), 97, 131, _spec())
    _, conf, road = _reference(lg, 97, 131)
    assert_masks_match(p.mask, lg, 97, 131)
    assert p.confidence == pytest.approx(conf, abs=1e-6)  # under 4x the logit map: exact
    assert np.abs(p.road_probability.astype(int) - road.astype(int)).max() <= 1


def test_nearest_upsampling_would_fail():
    """The checks above tell bilinear from nearest: on structured logits at 1280x720, a
    nearest-neighbour mask differs from the bilinear one on far more pixels than allowed."""
    lg = structured_logits(48, 80)
    nearest = F.interpolate(lg[None], size=(720, 1280), mode="nearest")[0].argmax(0).numpy()
    want = _reference(lg, 720, 1280)[0]
    assert (nearest != want).mean() > 1e-3
    with pytest.raises(AssertionError):
        assert_masks_match(nearest.astype(np.uint8), lg, 720, 1280)


@pytest.mark.parametrize("logit_size", [(96, 160), (256, 448), (368, 640)])
@pytest.mark.parametrize("noise", [0.5, 1.0])
def test_confidence_on_a_trained_like_map_is_close(logit_size, noise):
    """The demo's, the encoder benchmark's and the reference U-Net's logit sizes at 1280x720:
    sampled vs full-resolution mean, on smooth regions with noise on top."""
    lg = structured_logits(*logit_size) + noise * random_logits(*logit_size, seed=3)
    p = postprocess(lg.clone(), 720, 1280, _spec())
    assert p.confidence == pytest.approx(_reference(lg, 720, 1280)[1], abs=3e-3)


@pytest.mark.parametrize("logit_size", [(6, 10), (96, 160), (368, 640)])
def test_confidence_samples_do_not_grow_with_the_logits(monkeypatch, logit_size):
    """About 2^14 pixels are interpolated for the confidence at 1280x720 whatever the logits'
    size: one per source cell made it 230k pixels (21 ms) for 256x448 logits, 922k for 368x640."""
    sampled = []
    logits = upsampling.Grid.logits

    def counting(self, rows, cols):
        sampled.append(rows.numel())
        return logits(self, rows, cols)

    monkeypatch.setattr(upsampling.Grid, "logits", counting)
    g = upsampling.Grid(structured_logits(*logit_size), 720, 1280)
    upsampling.sampled_confidence(g)
    assert 2**14 <= sum(sampled) <= 1.5 * 2**14


def test_road_probability_is_lazy_and_keeps_no_batch_view():
    lg = structured_logits(48, 80)
    batch = torch.stack([lg, lg])
    p = postprocess(batch[0], 720, 1280, _spec())
    assert callable(p._road)  # not computed yet
    held = p._road.args[0]
    assert held.untyped_storage().data_ptr() != batch.untyped_storage().data_ptr()
    road = p.road_probability
    assert road is p.road_probability  # computed once
    want = _reference(lg, 720, 1280)[2].astype(int)
    assert np.abs(road.astype(int) - want).max() <= 1  # F.interpolate's rounding may differ
    small = postprocess(lg.clone(), 20, 30, _spec())
    assert isinstance(small._road, np.ndarray)  # no larger than the logits: computed at once


def test_hand_computed_two_pixel_logits():
    """A 1x2 logit map upsampled to 1x4: weights by hand, softmax by hand."""
    spec = _spec(("road", "sky"))
    # road logit 0 then 2; sky logit 1 then 1 -> upsampled road logits: 0, 0.5, 1.5, 2
    lg = torch.tensor([[[0.0, 2.0]], [[1.0, 1.0]]])
    p = postprocess(lg, 1, 4, spec)
    road_logit = np.array([0.0, 0.5, 1.5, 2.0])
    p_road = 1 / (1 + np.exp(1.0 - road_logit))
    assert p.mask.tolist() == [[1, 1, 0, 0]]
    assert p.confidence == pytest.approx(np.maximum(p_road, 1 - p_road).mean(), abs=1e-6)
    assert p.road_probability.tolist() == [np.round(p_road * 255).astype(int).tolist()]
    assert p.class_shares == {"road": 0.5, "sky": 0.5}


def test_hand_computed_boundary_cell_is_interpolated():
    """1x2 -> 1x8: nearest would switch at the middle; bilinear switches where 2t > 1.2."""
    spec = _spec(("road", "sky"))
    lg = torch.tensor([[[0.0, 2.0]], [[1.2, 1.2]]])
    p = postprocess(lg, 1, 8, spec)
    # source x = (dst + 0.5) / 4 - 0.5 clamped: 0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1
    assert p.mask.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]
    lg = torch.tensor([[[0.0, 2.0]], [[1.4, 1.4]]])  # switch past the middle: road from x > 0.7
    assert postprocess(lg, 1, 8, spec).mask.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]


def test_without_a_road_class_no_road_probability():
    spec = _spec(("sky", "car"))
    p = postprocess(torch.zeros(2, 3, 3), 5, 5, spec)
    assert p.road_probability is None
    assert p.confidence == pytest.approx(0.5)
    assert p.mask.tolist() == [[0] * 5] * 5  # ties go to the first class, as torch.max does

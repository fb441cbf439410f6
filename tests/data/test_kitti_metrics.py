"""KITTI Road measures (MaxF, AP, precision, recall, FPR, FNR) against values worked out by hand,
and the road probabilities evaluation feeds them from a model's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from roadseg.data.bdd100k import Sample
from roadseg.evaluate.kitti import flat_kitti_scores, kitti_model_scores, road_probabilities
from roadseg.metrics.kitti import maxf_score, quantize, road_histograms, road_scores
from roadseg.models.spec import ModelSpec

# Road pixels at 8-bit values 230, 153, 51; not-road pixels at 178, 26 (0.7 and 0.1 round to
# 178 and 26: np.rint rounds 178.5 to even, 25.5 to 26). Road at threshold k when value >= k:
#   k <= 26: TP 3 FP 2 -> P 0.6  R 1    F 0.75
#   27..51:  TP 3 FP 1 -> P 0.75 R 1    F 6/7     <- MaxF, first threshold 27/255
#   52..153: TP 2 FP 1 -> P 2/3  R 2/3  F 2/3
#   154..178 TP 1 FP 1 -> P 0.5  R 1/3  F 0.4
#   179..230 TP 1 FP 0 -> P 1    R 1/3  F 0.5
#   >= 231:  TP 0 FP 0 -> dropped (precision and recall both 0), as the devkit does
# AP (11 recall levels): 0, .1, .2, .3 -> 1.0; .4 .. 1.0 (7 levels) -> 0.75; (4 + 7 * .75) / 11.
PROB = np.array([[0.9, 0.6, 0.2, 0.7, 0.1, 1.0]])
TRUTH = np.array([[1, 1, 1, 0, 0, 255]], np.uint8)  # the last pixel is void: never counted


def test_quantize_and_histograms() -> None:
    assert quantize(PROB).tolist() == [[230, 153, 51, 178, 26, 255]]
    hist = road_histograms(PROB, TRUTH)
    assert hist.shape == (2, 256) and hist.sum() == 5
    assert np.flatnonzero(hist[1]).tolist() == [51, 153, 230]
    assert np.flatnonzero(hist[0]).tolist() == [26, 178]
    with pytest.raises(ValueError, match="ids"):
        road_histograms(PROB, np.full((1, 6), 3, np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantize(np.array([1.5]))


def test_maxf_ap_and_operating_point_by_hand() -> None:
    s = maxf_score(road_histograms(PROB, TRUTH))
    assert s["maxf"] == pytest.approx(6 / 7)
    assert s["ap"] == pytest.approx((4 * 1.0 + 7 * 0.75) / 11)
    assert s["threshold"] == pytest.approx(27 / 255)
    assert (s["precision"], s["recall"]) == (pytest.approx(0.75), pytest.approx(1.0))
    assert (s["fpr"], s["fnr"]) == (pytest.approx(0.5), pytest.approx(0.0))
    assert (s["pos"], s["neg"]) == (3, 2)


def test_perfect_and_empty() -> None:
    truth = np.array([[1, 0, 1, 0]], np.uint8)
    s = maxf_score(road_histograms(truth.astype(float), truth))
    assert s["maxf"] == pytest.approx(1.0) and s["ap"] == pytest.approx(1.0)
    assert s["fpr"] == 0.0 and s["fnr"] == 0.0
    none = maxf_score(road_histograms(np.zeros((1, 2)), np.zeros((1, 2), np.uint8)))
    assert none["maxf"] is None and none["neg"] == 2


def test_categories_pool_their_pixels() -> None:
    # um holds the hand-worked example; uu a perfect image. Overall pools all 9 counted pixels:
    # road 230,153,51,255,255; not road 178,26,0,0 -> at k in 27..51: TP 5 FP 1, F = 2*5/6/(5/6+1)
    uu_prob, uu_truth = np.array([[1.0, 0.0, 1.0, 0.0]]), np.array([[1, 0, 1, 0]], np.uint8)
    s = road_scores([("um", PROB, TRUTH), ("uu", uu_prob, uu_truth)])
    assert set(s) == {"overall", "um", "uu"}
    assert s["um"]["maxf"] == pytest.approx(6 / 7) and s["uu"]["maxf"] == pytest.approx(1.0)
    assert s["overall"]["maxf"] == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert s["overall"]["fpr"] == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="category"):
        road_scores([("xx", PROB, TRUTH)])
    flat = flat_kitti_scores(s, "eval_val")
    assert flat["eval_val_kitti_maxf"] == s["overall"]["maxf"]
    assert flat["eval_val_kitti_ap/um"] == s["um"]["ap"]


class RedIsRoad(nn.Module):
    """Logits (0, logit(red)): the softmax road channel equals the red channel in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x[:, 0].clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.zeros_like(r), torch.log(r) - torch.log1p(-r)], dim=1)


def _spec(h: int, w: int) -> ModelSpec:
    return ModelSpec("red", 2, 3, 1, (h, w), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                     ("not road", "road"), ((255, 0, 0), (255, 0, 255)), dataset="kitti_road")  # fmt: skip


def test_model_scores_from_logits(tmp_path) -> None:
    red = np.array([[230, 153, 51], [178, 26, 200]], np.uint8)
    truth = np.array([[1, 1, 1], [0, 0, 255]], np.uint8)
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0] = red
    prob = road_probabilities(RedIsRoad(), [image], _spec(2, 3))[0]
    assert np.allclose(prob, red / 255, atol=1e-5)
    Image.fromarray(image).save(tmp_path / "um_000001.png")
    np.save(tmp_path / "truth.npy", truth)
    sample = Sample("val", "um_000001", tmp_path / "um_000001.png", tmp_path / "truth.npy")
    s = kitti_model_scores(RedIsRoad(), _spec(2, 3), [sample], np.load)
    assert s["um"]["maxf"] == pytest.approx(6 / 7) and s["overall"] == s["um"]
    unnamed = Sample("val", "road1", sample.image, sample.label)
    with pytest.raises(ValueError, match="name"):
        kitti_model_scores(RedIsRoad(), _spec(2, 3), [unnamed], np.load)

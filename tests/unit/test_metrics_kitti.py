"""KITTI Road measures at their edges: no road, no not-road, ties, pooling, 8-bit inputs.

tests/data/test_kitti_metrics.py works one histogram out by hand; these cases each pin a part of
`roadseg.metrics.kitti` that a worked example with every count non-zero cannot see.
"""

from __future__ import annotations

import numpy as np
import pytest

from roadseg.metrics.kitti import RoadScores, maxf_score, quantize, road_histograms

MEASURES = ("maxf", "ap", "precision", "recall", "fpr", "fnr", "threshold")


def hist(road: dict[int, int], not_road: dict[int, int]) -> np.ndarray:
    """(2, 256) histogram from {8-bit value: pixel count} of road and not-road pixels."""
    h = np.zeros((2, 256), np.int64)
    for row, counts in ((1, road), (0, not_road)):
        for value, n in counts.items():
            h[row, value] = n
    return h


def test_no_road_in_the_truth_leaves_every_measure_undefined() -> None:
    assert maxf_score(hist({}, {10: 4})) == {"pos": 0, "neg": 4} | dict.fromkeys(MEASURES)


def test_no_not_road_pixels_give_zero_false_positive_rate() -> None:
    """Perfect scores, never above 1 (the devkit's 1e-10 guards only ever lower them)."""
    s = maxf_score(hist({200: 1}, {}))
    assert s["fpr"] == 0.0 and s["fnr"] == 0.0 and s["precision"] == 1.0 and s["recall"] == 1.0
    assert 1 - 1e-9 < s["maxf"] <= 1.0 and 1 - 1e-9 < s["ap"] <= 1.0
    assert s["threshold"] == 0.0  # the first (lowest) threshold of the tie


def test_operating_point_where_precision_is_one_half() -> None:
    """Road at 200 (2 px) and 50 (2 px); not road at 200 (2 px).
    k <= 50: TP 4 FP 2 -> P 2/3, R 1, F 0.8 (the MaxF); 51..200: TP 2 FP 2 -> P 1/2, R 1/2."""
    s = maxf_score(hist({200: 2, 50: 2}, {200: 2}))
    assert s["maxf"] == pytest.approx(0.8)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == 1.0 and s["fnr"] == 0.0
    assert s["fpr"] == 1.0 and s["threshold"] == 0.0
    t = maxf_score(hist({200: 2, 10: 6}, {200: 2, 0: 30}))
    # k = 0: TP 8 FP 32 -> F 0.4; 1..10: TP 8 FP 2 -> P 0.8 R 1 F 8/9 (MaxF); 11..200: P 0.5 R 0.25
    assert t["maxf"] == pytest.approx(8 / 9) and t["threshold"] == 1 / 255
    assert t["fpr"] == pytest.approx(2 / 32) and t["fnr"] == 0.0
    # one road and one not-road pixel, both at 200: the only point has TP = FP = 1
    half = maxf_score(hist({200: 1}, {200: 1}))
    assert half["precision"] == 0.5 and half["maxf"] == pytest.approx(2 / 3)


def test_false_negative_rate_is_a_share_of_the_road_pixels() -> None:
    """Road at 250 (3 px) and 5 (1 px); not road at 5 (9 px): MaxF at k = 6..250, TP 3 of 4."""
    s = maxf_score(hist({250: 3, 5: 1}, {5: 9}))
    assert s["threshold"] == 6 / 255
    assert s["recall"] == 0.75 and s["fnr"] == 0.25 and s["precision"] == 1.0 and s["fpr"] == 0.0


def test_updates_pool_per_category_with_the_scores_ignore_index() -> None:
    scores = RoadScores(ignore_index=7)
    prob = np.array([[1.0, 0.0, 0.5]])
    scores.update("um", prob, np.array([[1, 0, 7]], np.uint8))  # 7 is void here, not an error
    scores.update("um", prob, np.array([[1, 0, 1]], np.uint8))
    scores.update("uu", np.array([[0.2, 0.9]]), np.array([[0, 0]], np.uint8))
    h = scores.hist["um"]
    assert h[1, 255] == 2 and h[1, 128] == 1 and h[0, 0] == 2 and h.sum() == 5
    out = scores.compute()
    assert set(out) == {"overall", "um", "uu"}  # umm has no images
    assert out["um"]["pos"] == 3 and out["um"]["neg"] == 2
    assert out["overall"]["pos"] == 3 and out["overall"]["neg"] == 4
    assert out["uu"]["maxf"] is None
    with pytest.raises(ValueError, match=r"ground truth holds ids \[7\]; expected 0, 1 or 255"):
        RoadScores().update("um", prob, np.array([[1, 0, 7]], np.uint8))
    with pytest.raises(ValueError, match="unknown KITTI category 'xx'"):
        scores.update("xx", prob, np.array([[1, 0, 1]], np.uint8))


def test_eight_bit_probabilities_are_taken_as_already_quantised() -> None:
    q = np.array([[0, 128, 255]], np.uint8)
    h = road_histograms(q, np.array([[1, 1, 0]], np.uint8))
    assert h[1, 0] == 1 and h[1, 128] == 1 and h[0, 255] == 1
    with pytest.raises(ValueError, match=r"probability \(1, 3\) and ground truth \(1, 2\) differ"):
        road_histograms(q, np.array([[1, 1]], np.uint8))


def test_quantize_rounds_the_exact_value_whatever_the_float_type() -> None:
    """0.01765 in float16 is 0.0176544189453125: x 255 = 4.5018..., so 5 (float16 arithmetic
    would round the product to 4.5 and then to the even 4)."""
    p16 = np.array([0.01765], np.float16)
    assert quantize(p16).tolist() == [5] == quantize(p16.astype(np.float64)).tolist()
    for bad in ([-0.1], [1.5], [np.nan]):
        with pytest.raises(ValueError, match=r"^road probabilities must lie in \[0, 1\]$"):
            quantize(np.array(bad))
